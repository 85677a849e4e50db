// Errors: the error classes this package throws. Their `kind` names are shared with the Go and
// Python SDKs and the wire vectors in sdk/vectors; every message says what happened, on which
// object, and what to do.

import type { ExecutionResult } from "./types.js";

/** The kinds of error, the same in every SDK of this project. */
export type ErrorKind =
  | "ConnectionError"
  | "ConfigError"
  | "RequestError"
  | "TimeoutError"
  | "CommandTimeoutError"
  | "NotFoundError"
  | "NotReadyError"
  | "PathError"
  | "ClaimFailedError"
  | "WarmPoolNotFoundError"
  | "TemplateNotFoundError"
  | "PortForwardError"
  | "TooLargeError"
  | "StreamError";

export interface SandboxErrorOptions {
  statusCode?: number;
  code?: string;
  cause?: unknown;
}

/** Base class of every error of this package. */
export class SandboxError extends Error {
  readonly kind: ErrorKind = "RequestError";
  /** HTTP status of an error answer. */
  readonly statusCode?: number;
  /** The answer's error code: sandboxd's NOT_FOUND, CONFLICT, ...; ROUTER for the router's own. */
  readonly code?: string;

  constructor(message: string, options: SandboxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.statusCode = options.statusCode;
    this.code = options.code;
  }
}

/** Nothing answers where the API server, the router or the sandbox should be. */
export class SandboxConnectionError extends SandboxError {
  override readonly kind: ErrorKind = "ConnectionError";
}

/** Configuration that cannot work: a missing kubeconfig or endpoints file, a bad option. */
export class SandboxConfigError extends SandboxError {
  override readonly kind: ErrorKind = "ConfigError";
}

/** The server answered with an error status (`statusCode`, `code`). */
export class SandboxRequestError extends SandboxError {
  override readonly kind: ErrorKind = "RequestError";
}

/** Something did not happen within the time asked for. */
export class SandboxTimeoutError extends SandboxError {
  override readonly kind: ErrorKind = "TimeoutError";
}

/** A command or a cell ran past its timeout and was killed; `result` has its output so far. */
export class CommandTimeoutError extends SandboxTimeoutError {
  override readonly kind: ErrorKind = "CommandTimeoutError";
  readonly result?: ExecutionResult;

  constructor(message: string, result?: ExecutionResult) {
    super(message);
    this.result = result;
  }
}

/** The claim or the Sandbox does not exist (any more). */
export class SandboxNotFoundError extends SandboxError {
  override readonly kind: ErrorKind = "NotFoundError";
}

/** The sandbox does not answer (suspended, restarting, gone), or the handle is closed. */
export class SandboxNotReadyError extends SandboxError {
  override readonly kind: ErrorKind = "NotReadyError";
}

/** An unusable file path. */
export class SandboxPathError extends SandboxError {
  override readonly kind: ErrorKind = "PathError";
}

/** The controller rejected the claim for good. */
export class SandboxClaimFailedError extends SandboxError {
  override readonly kind: ErrorKind = "ClaimFailedError";
}

/** The SandboxWarmPool of a claim does not exist. */
export class SandboxWarmPoolNotFoundError extends SandboxError {
  override readonly kind: ErrorKind = "WarmPoolNotFoundError";
}

/** The SandboxTemplate of a pool does not exist. */
export class SandboxTemplateNotFoundError extends SandboxError {
  override readonly kind: ErrorKind = "TemplateNotFoundError";
}

/** The port-forward tunnel through the API server could not start, or it died. */
export class SandboxPortForwardError extends SandboxError {
  override readonly kind: ErrorKind = "PortForwardError";
}

/** A streamed answer (exec, a cell, a terminal, a file read) ended before its last event. */
export class SandboxStreamError extends SandboxError {
  override readonly kind: ErrorKind = "StreamError";
}

/** A file is larger than the limit the reader gave (maxBytes). */
export class SandboxTooLargeError extends SandboxError {
  override readonly kind: ErrorKind = "TooLargeError";
}
