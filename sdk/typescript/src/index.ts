// The package's entry point: what users import.

export { SandboxClient, type CreateSandboxOptions } from "./client.js";
export { Sandbox, Code, Commands, Files, Process, Terminal, type CodeContext, StatusReady, StatusNotReady, StatusNotFound, type PtyOptions } from "./sandbox.js";
export type { ClientOptions, Mode } from "./options.js";
export type { CodeError, CodeOutput, CodeResult, ExecutionResult, FileEntry, FileOptions, ProcessInfo, RunCodeOptions, RunOptions } from "./types.js";
export {
  CommandTimeoutError,
  SandboxClaimFailedError,
  SandboxConfigError,
  SandboxConnectionError,
  SandboxError,
  SandboxNotFoundError,
  SandboxNotReadyError,
  SandboxPathError,
  SandboxPortForwardError,
  SandboxRequestError,
  SandboxStreamError,
  SandboxTemplateNotFoundError,
  SandboxTimeoutError,
  SandboxTooLargeError,
  SandboxWarmPoolNotFoundError,
  type ErrorKind,
} from "./errors.js";
