// `sitekeep/writer`: the client library an application imports to take part in site backups as a
// writer. It waits for a Sitekeep task's writer socket, registers, and calls the application's
// hooks: prepare (optional), freeze (quiesce: flush, pause writes), thaw (resume). A frozen
// application is thawed even if the task dies or overruns: when the connection drops or the
// freeze deadline passes, the library calls thaw itself.
//
//   import { startWriter } from "sitekeep/writer";
//   const w = startWriter({ socket: "/var/lib/sitekeep/writers/PS1.sock", name: "app",
//     freeze: async () => { await db.pauseWrites(); }, thaw: async () => { db.resumeWrites(); } });
//   ...
//   w.stop();
import { type Socket, connect } from "node:net";
import { type TaskToWriter, type WriterToTask, encode, lineReader } from "./protocol.js";

export interface WriterHooks {
  /** Called before freezing (e.g. finish in-flight work); optional. */
  prepare?: () => void | Promise<void>;
  /** Quiesce the application. Must finish within the task's writer timeout. */
  freeze: () => void | Promise<void>;
  /** Resume. Called exactly once after every successful or attempted freeze. */
  thaw: () => void | Promise<void>;
}

export interface WriterOptions extends WriterHooks {
  /** The task's writer socket (`<stateDir>/writers/<site>.sock`). */
  socket: string;
  /** The writer's name, as in the control file's writers list. */
  name: string;
  /**
   * How often to look for a running task (default 1000 ms). The retry timer does not keep the
   * process alive on its own: the application's work does.
   */
  retryMs?: number;
  /** Called on every state change (for the application's own log). */
  onEvent?: (event: WriterEvent) => void;
}

export type WriterEvent =
  | { kind: "connected" }
  | { kind: "step"; step: "prepare" | "freeze" | "thaw"; ok: boolean; error?: string }
  | { kind: "self-thaw"; reason: "connection lost" | "deadline passed" }
  | { kind: "disconnected" };

export interface WriterHandle {
  /** Stops looking for tasks; thaws first if frozen. */
  stop(): Promise<void>;
  readonly frozen: boolean;
}

export function startWriter(opts: WriterOptions): WriterHandle {
  let stopped = false;
  let frozen = false;
  let socket: Socket | undefined;
  let retry: NodeJS.Timeout | undefined;
  let deadlineTimer: NodeJS.Timeout | undefined;
  let thawing: Promise<string | undefined> | undefined;
  const retryMs = opts.retryMs ?? 1000;

  /** Why the writer thawed by itself since the last freeze, if it did: the task must not trust the freeze. */
  let selfThawed: string | undefined;
  /** The freeze hook in progress: a thaw waits for it, or the freeze would land after the thaw. */
  let freezing: Promise<unknown> = Promise.resolve();

  /** Runs the thaw hook once per freeze; resolves to the hook's error message, if it failed. */
  const thawOnce = (reason?: "connection lost" | "deadline passed"): Promise<string | undefined> => {
    if (!frozen) return thawing ?? Promise.resolve(undefined);
    frozen = false;
    if (deadlineTimer) clearTimeout(deadlineTimer);
    if (reason) {
      selfThawed = reason;
      opts.onEvent?.({ kind: "self-thaw", reason });
    }
    thawing = freezing
      .catch(() => undefined)
      .then(() => opts.thaw())
      .then(
        () => undefined,
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      );
    return thawing;
  };

  const schedule = (): void => {
    if (stopped) return;
    retry = setTimeout(attempt, retryMs);
    retry.unref();
  };

  const attempt = (): void => {
    if (stopped) return;
    const s = connect(opts.socket);
    socket = s;
    const send = (m: WriterToTask): void => {
      if (!s.destroyed) s.write(encode(m));
    };
    const step = async (name: "prepare" | "freeze" | "thaw", fn: (() => void | Promise<void>) | undefined): Promise<void> => {
      try {
        await fn?.();
        opts.onEvent?.({ kind: "step", step: name, ok: true });
        send({ type: "ack", step: name });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        opts.onEvent?.({ kind: "step", step: name, ok: false, error: message });
        send({ type: "fail", step: name, message });
      }
    };
    s.on("connect", () => {
      opts.onEvent?.({ kind: "connected" });
      send({ type: "identify", name: opts.name, pid: process.pid });
    });
    s.on(
      "data",
      lineReader((raw) => {
        const m = raw as TaskToWriter;
        switch (m.type) {
          case "prepare":
            void step("prepare", opts.prepare);
            break;
          case "freeze":
            selfThawed = undefined;
            frozen = true; // before the hook: a half-done freeze is thawed too
            if (deadlineTimer) clearTimeout(deadlineTimer);
            deadlineTimer = setTimeout(() => void thawOnce("deadline passed"), Math.max(0, m.deadline - Date.now()));
            freezing = step("freeze", opts.freeze);
            break;
          case "thaw":
            if (!frozen) {
              // Thawed by itself earlier (deadline): the application ran while the task thought it
              // frozen, so the task must not commit what it read.
              send(selfThawed ? { type: "fail", step: "thaw", message: `the writer had already thawed itself (${selfThawed})` } : { type: "ack", step: "thaw" });
              break;
            }
            void thawOnce().then((error) => {
              opts.onEvent?.({ kind: "step", step: "thaw", ok: error === undefined, ...(error ? { error } : {}) });
              // A thaw that failed is reported: the application may still be quiesced (5013).
              send(error === undefined ? { type: "ack", step: "thaw" } : { type: "fail", step: "thaw", message: error });
            });
            break;
          case "done":
          case "reject":
            s.end();
            break;
        }
      }),
    );
    s.on("error", () => undefined); // no task running: try again later
    s.on("close", () => {
      if (socket === s) socket = undefined;
      if (frozen) void thawOnce("connection lost");
      opts.onEvent?.({ kind: "disconnected" });
      schedule();
    });
  };

  attempt();
  return {
    get frozen() {
      return frozen;
    },
    async stop() {
      stopped = true;
      if (retry) clearTimeout(retry);
      socket?.destroy();
      await thawOnce("connection lost");
    },
  };
}
