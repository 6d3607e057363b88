// An application that takes part in Sitekeep site backups as a socket writer.
// Control file:   writers: [ { name: orders-app, socket: true, timeout: 30s } ]
// Run:            node examples/writer-app.mjs /var/lib/sitekeep/writers/PS1.sock
//
// While a backup's snapshot is cut, the app stops accepting writes (freeze) and resumes (thaw).
// If the backup process dies while the app is frozen, the library thaws it by itself.
import { startWriter } from "sitekeep/writer";

const socket = process.argv[2] ?? "/var/lib/sitekeep/writers/PS1.sock";
let paused = false;

const writer = startWriter({
  socket,
  name: "orders-app",
  prepare: async () => {
    // finish in-flight requests, e.g. await queue.drain()
  },
  freeze: async () => {
    paused = true; // stop taking writes; flush buffers to disk
  },
  thaw: async () => {
    paused = false; // take writes again
  },
  onEvent: (e) => console.log(new Date().toISOString(), "writer:", JSON.stringify(e)),
});

setInterval(() => {
  if (!paused) {
    // ... the application's normal work ...
  }
}, 1000);

process.on("SIGTERM", async () => {
  await writer.stop(); // thaws first if a backup had it frozen
  process.exit(0);
});
