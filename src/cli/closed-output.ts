// What becomes of a command's output when it cannot be written. `sitekeep ls latest | head` closes
// the pipe after ten lines: Node reports the next write's EPIPE as an 'error' event on
// process.stdout, and unhandled, that ended the process with a stack trace in the middle of the
// command, before its cleanup (the repository lock, a site backup's thaw). Exiting at once on
// EPIPE, as many tools do, would skip that cleanup just the same. So output to a reader that has
// gone is dropped and the command finishes as it would have; any other failure to write (a full
// disk under `> file`) drops the rest as well, but is reported once the command is over and makes
// its exit code 1, since that output was what was asked for.
import { SitekeepError } from "../errors.js";

let failure: SitekeepError | undefined;
let taken = false;
let installed = false;

/** Installs the handling above on stdout and stderr, once per process. */
export function guardOutput(): void {
  if (installed) return;
  installed = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      // Nothing more goes to it: a write to the closed stream would only fail again. A caller
      // waiting for its write's callback still gets it.
      stream.write = ((_chunk: unknown, encodingOrDone?: unknown, done?: unknown) => {
        const callback = typeof encodingOrDone === "function" ? encodingOrDone : done;
        if (typeof callback === "function") process.nextTick(callback as () => void);
        return true;
      }) as typeof stream.write;
      if (err.code === "EPIPE") return;
      failure ??= new SitekeepError(
        "output.write",
        `could not write the ${stream === process.stderr ? "messages" : "output"}: ${err.message}`,
        { hint: "make room where the output goes (or send it elsewhere) and run the command again" },
      );
      // Once main() has looked (takeOutputFailure), the exit code still tells.
      if (taken && !process.exitCode) process.exitCode = 1;
    });
  }
}

/**
 * The failure to write the output, other than a reader that went away, if there was one; main()
 * asks once the command is over, and a failure after that sets the exit code to 1 by itself.
 */
export function takeOutputFailure(): SitekeepError | undefined {
  taken = true;
  return failure;
}
