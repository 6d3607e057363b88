// Typed errors shared by every layer. Each carries a stable code, a one-line message that names the
// problem, a hint that names the fix, and the process exit code the CLI uses (restic's numbering).

export const ExitCode = {
  ok: 0,
  failed: 1,
  partial: 3, // snapshot made, some source files unreadable
  noRepository: 10,
  locked: 11,
  wrongPassword: 12,
  interrupted: 130,
} as const;

export class SitekeepError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  readonly exitCode: number;

  constructor(code: string, message: string, opts: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "SitekeepError";
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? ExitCode.failed;
  }
}

export function isErrnoError(err: unknown, ...codes: string[]): err is NodeJS.ErrnoException {
  return (
    err instanceof Error &&
    typeof (err as NodeJS.ErrnoException).code === "string" &&
    (codes.length === 0 || codes.includes((err as NodeJS.ErrnoException).code as string))
  );
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
