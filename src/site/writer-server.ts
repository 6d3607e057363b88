// The task's side of the writer protocol (src/writer/protocol.ts): a Unix socket in the state
// directory where applications register as writers while a run is active. Each registered
// connection becomes a Writer that the WriterSet freezes and thaws like a command writer.
import { chmodSync, existsSync, mkdirSync, unlinkSync } from "node:fs";
import { type Server, type Socket, connect, createServer } from "node:net";
import { join } from "node:path";
import { SitekeepError } from "../errors.js";
import { type Step, type TaskToWriter, type WriterToTask, encode, lineReader } from "../writer/protocol.js";
import type { StepResult, Writer } from "./writers.js";

/** Unix socket paths are limited to 107 bytes on Linux. */
const MAX_SOCKET_PATH = 107;

export function writerSocketPath(stateDir: string, site: string): string {
  return join(stateDir, "writers", `${site}.sock`);
}

interface Registered {
  name: string;
  pid: number;
  socket: Socket;
  /** Resolves the step in flight. */
  waiting?: { step: Step; resolve: (r: { ok: boolean; message?: string }) => void };
  closed: boolean;
}

export class WriterServer {
  private readonly registered = new Map<string, Registered>();
  /** Every connection, registered or not: close() must not wait on one that never says goodbye. */
  private readonly sockets = new Set<Socket>();
  private readonly listeners = new Set<() => void>();

  private constructor(
    readonly path: string,
    private readonly server: Server,
    private readonly site: string,
    private readonly runId: string,
  ) {}

  static async listen(stateDir: string, site: string, runId: string): Promise<WriterServer> {
    const path = writerSocketPath(stateDir, site);
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
      throw new SitekeepError("site.writer-socket", `the writer socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes`, { hint: "use a shorter stateDir" });
    }
    mkdirSync(join(stateDir, "writers"), { recursive: true, mode: 0o700 });
    if (existsSync(path)) {
      // A socket left by a crashed run, unless a run is listening on it (the site lock prevents that).
      if (await answers(path)) throw new SitekeepError("site.busy", `another task is listening on ${path}`, { hint: "wait for it to finish", exitCode: 11 });
      unlinkSync(path);
    }
    const server = createServer();
    const ws = new WriterServer(path, server, site, runId);
    server.on("connection", (s) => ws.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
    chmodSync(path, 0o600);
    return ws;
  }

  /** Waits until every named writer has registered, or the time is up; returns the missing names. */
  async waitFor(names: string[], timeoutMs: number): Promise<string[]> {
    const missing = (): string[] => names.filter((n) => !this.registered.has(n));
    if (!missing().length) return [];
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      const check = (): void => {
        if (!missing().length) {
          this.listeners.delete(check);
          done();
        }
      };
      this.listeners.add(check);
    });
    return missing();
  }

  /** A Writer driving the registered application `name`. */
  writer(name: string, timeoutMs: number, maxFreezeMs: number): Writer {
    const step = async (s: Step, msg: TaskToWriter): Promise<StepResult> => {
      const started = Date.now();
      const r = this.registered.get(name);
      if (!r || r.closed) return { ok: false, detail: `writer ${name} is not connected`, durationMs: 0 };
      const outcome = await new Promise<{ ok: boolean; message?: string }>((resolve) => {
        const timer = setTimeout(() => resolve({ ok: false, message: `no answer to ${s} within ${timeoutMs} ms` }), timeoutMs);
        r.waiting = {
          step: s,
          resolve: (x) => {
            clearTimeout(timer);
            resolve(x);
          },
        };
        r.socket.write(encode(msg));
      });
      r.waiting = undefined;
      return { ok: outcome.ok, detail: outcome.ok ? `${s} acknowledged` : (outcome.message ?? `${s} failed`), durationMs: Date.now() - started };
    };
    return {
      name,
      freeze: async () => {
        const p = await step("prepare", { type: "prepare" });
        if (!p.ok) return p;
        // The writer thaws by itself at this deadline if it never hears from us again.
        return step("freeze", { type: "freeze", deadline: Date.now() + maxFreezeMs });
      },
      thaw: () => step("thaw", { type: "thaw" }),
    };
  }

  /** Tells every writer the run is over and stops listening. */
  async close(): Promise<void> {
    for (const r of this.registered.values()) {
      if (!r.closed) r.socket.end(encode({ type: "done" }));
    }
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    // A short grace for goodbyes, then connections that linger (a hung application, a client that
    // never identified) are cut: the run's lock and socket must not wait on them.
    const grace = new Promise<void>((resolve) => setTimeout(resolve, 500).unref());
    await Promise.race([closed, grace]);
    for (const s of this.sockets) s.destroy();
    await closed;
    try {
      unlinkSync(this.path);
    } catch {
      // already removed
    }
  }

  private accept(s: Socket): void {
    this.sockets.add(s);
    s.on("close", () => this.sockets.delete(s));
    let me: Registered | undefined;
    s.on("error", () => undefined);
    s.on(
      "data",
      lineReader((raw) => {
        const m = raw as WriterToTask;
        if (!me) {
          if (m.type !== "identify" || typeof m.name !== "string") {
            s.end(encode({ type: "reject", message: "identify first" }));
            return;
          }
          if (this.registered.has(m.name) && !this.registered.get(m.name)?.closed) {
            s.end(encode({ type: "reject", message: `a writer named ${m.name} is already registered` }));
            return;
          }
          me = { name: m.name, pid: Number(m.pid) || 0, socket: s, closed: false };
          this.registered.set(m.name, me);
          s.write(encode({ type: "welcome", site: this.site, runId: this.runId }));
          for (const l of [...this.listeners]) l();
          return;
        }
        if ((m.type === "ack" || m.type === "fail") && me.waiting && me.waiting.step === m.step) {
          me.waiting.resolve(m.type === "ack" ? { ok: true } : { ok: false, message: `writer ${me.name} could not ${m.step}: ${m.message}` });
        }
      }),
    );
    s.on("close", () => {
      if (!me) return;
      me.closed = true;
      me.waiting?.resolve({ ok: false, message: `writer ${me.name} disconnected during ${me.waiting.step}` });
    });
  }
}

function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.on("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}
