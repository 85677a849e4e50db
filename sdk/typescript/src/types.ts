// Types of results and options shared by the modules of the SDK.

/** The outcome of a command. */
export interface ExecutionResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  /** The signal that killed the command, if one did. */
  signal: string | null;
  timedOut: boolean;
  truncated: boolean;
  durationMs: number;
  pid: number | null;
}

/** Options of a command. */
export interface RunOptions {
  /** Seconds; past it the command is killed and a CommandTimeoutError thrown. */
  timeout?: number;
  env?: Record<string, string>;
  /** Working directory (relative to sandboxd's work directory). */
  cwd?: string;
  stdin?: string;
  /** Per output stream; beyond it output is dropped (`truncated`). */
  maxOutputBytes?: number;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** Aborting ends the request; sandboxd then kills the command's process group. */
  signal?: AbortSignal;
}

/** One entry of a directory listing. */
export interface FileEntry {
  name: string;
  size: number;
  type: "file" | "directory";
  modified: Date | null;
  mode: string;
}

/** Options of file calls. */
export interface FileOptions {
  /** Seconds (default: the client's requestTimeout). */
  timeout?: number;
  /** read(): a larger file stops the read with SandboxTooLargeError. */
  maxBytes?: number;
  signal?: AbortSignal;
}

/** A cell's value: its text and rich representations (MIME type to data). */
export interface CodeOutput {
  text: string;
  data?: Record<string, string>;
}

/** The exception a cell raised. */
export interface CodeError {
  name: string;
  value: string;
  traceback: string;
}

/** The outcome of a cell. */
export interface CodeResult {
  stdout: string;
  stderr: string;
  results: CodeOutput[];
  /** The text of the last value, or null. */
  result: string | null;
  error: CodeError | null;
  status: "ok" | "error" | "timeout" | "interrupted" | "died" | string;
  context: string;
  executionCount: number;
  truncated: boolean;
  durationMs: number;
}

/** Options of runCode. */
export interface RunCodeOptions {
  language?: "python" | "javascript" | "bash";
  /** A context made with code.createContext (default: the language's default context). */
  context?: string;
  timeout?: number;
  maxOutputBytes?: number;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  signal?: AbortSignal;
}

/** One entry of sandboxd's process table. */
export interface ProcessInfo {
  id: number;
  pid: number;
  command: unknown;
  origin: string;
  pty: boolean;
  running: boolean;
  started_at: string;
}
