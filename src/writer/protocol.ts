// The writer protocol: an application ("socket writer") talks to a running Sitekeep task over a
// local Unix socket, one JSON object per line. The task leads; the writer acknowledges each step:
//
//   writer -> task   {"type":"identify","name":"app","pid":123}
//   task   -> writer {"type":"welcome","site":"PS1","runId":"..."}
//   task   -> writer {"type":"prepare"}                  writer -> {"type":"ack","step":"prepare"}
//   task   -> writer {"type":"freeze","deadline":<ms>}   writer -> {"type":"ack","step":"freeze"}
//   task   -> writer {"type":"thaw"}                     writer -> {"type":"ack","step":"thaw"}
//   task   -> writer {"type":"done"}                     (both close)
//
// A writer that cannot do a step answers {"type":"fail","step":...,"message":...}. A frozen writer
// thaws by itself when the connection drops (the task died, even by SIGKILL) or the freeze's
// deadline passes: thaw never depends on the task surviving.

export type Step = "prepare" | "freeze" | "thaw";

export type WriterToTask =
  | { type: "identify"; name: string; pid: number }
  | { type: "ack"; step: Step }
  | { type: "fail"; step: Step; message: string };

export type TaskToWriter =
  | { type: "welcome"; site: string; runId: string }
  | { type: "prepare" }
  | { type: "freeze"; deadline: number }
  | { type: "thaw" }
  | { type: "done" }
  | { type: "reject"; message: string };

/** Splits a byte stream into JSON lines. */
export function lineReader(onMessage: (m: unknown) => void): (chunk: Buffer | string) => void {
  let buf = "";
  return (chunk) => {
    buf += chunk.toString();
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      try {
        onMessage(JSON.parse(line));
      } catch {
        // not JSON: ignored (the other side is not speaking this protocol)
      }
    }
    if (buf.length > 1 << 20) buf = ""; // a peer that never sends a newline
  };
}

export function encode(m: WriterToTask | TaskToWriter): string {
  return JSON.stringify(m) + "\n";
}
