import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ControlFileError, cronMaxGapMs, parseControlFile } from "./control-file.js";
import { controlFileJSONSchema } from "./control-schema.js";
import { parseDurationMs } from "./duration.js";

function problems(yaml: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseControlFile(yaml, "s.yaml", env);
  } catch (err) {
    assert.ok(err instanceof ControlFileError, String(err));
    return err.problems.map((p) => `${p.line}:${p.col} ${p.path}: ${p.message} | ${p.hint}`);
  }
  return [];
}

const minimal = `site: PS1
backup:
  destination: /srv/backup/PS1
`;

test("a minimal control file is valid and gets the documented defaults", () => {
  const { config } = parseControlFile(minimal, "s.yaml", {});
  assert.equal(config.site, "PS1");
  assert.equal(config.backup.enabled, true);
  assert.equal(config.backup.retentionWindow, "5d");
  assert.equal(config.backup.timezone, "local");
  assert.deepEqual(config.databases, []);
  assert.deepEqual(config.backup.copyTo, []);
});

test("the architecture doc's example keys are accepted (the key names are a contract)", () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-cf-"));
  try {
    const hook = join(dir, "after-backup.sh");
    writeFileSync(hook, "#!/bin/sh\nexit 0\n", { mode: 0o700 });
    const pw = join(dir, "password");
    writeFileSync(pw, "x\n", { mode: 0o600 });
    const yaml = `site: PS1
backup:
  enabled: true
  schedule: "0 2 * * 1,4"
  timezone: local
  destination: /srv/backup/PS1
  passwordFile: ${pw}
  databaseDestination: /srv/dbbackup/PS1
  retention: { keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 12 }
  retentionWindow: 5d
  alertOnFailure: true
  afterBackup: ${hook}
  copyTo: [ s3:https://s3.example/bucket/PS1 ]
databases:
  - { name: site, kind: postgres, url: "postgres://sitekeep@localhost/site" }
  - { name: reports, kind: sqlite, path: /srv/app/reports.db }
captures:
  - { name: service-config, export: "systemctl cat app", restore: "..." }
files:
  - { path: /srv/app, exclude: ["*.tmp", "logs/**"] }
  - { path: /srv/app/cd.latest }
  - { path: /srv/content, role: content-library }
  - { pathsFrom: "psql -Atc 'select source_path from packages' site", role: package-source }
writers:
  - { name: app, freeze: "systemctl stop app", thaw: "systemctl start app", timeout: 60s }
drill:
  schedule: "0 6 * * 0"
alerts:
  email: { to: [ops@example.org], from: sitekeep@example.org, smtp: "smtp://localhost:25" }
  webhook: { url: "https://hooks.example/sitekeep" }
service:
  listen: "127.0.0.1:8420"
stateDir: /var/lib/sitekeep
`;
    assert.deepEqual(problems(yaml), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("every problem is reported at once, with line:col and a fix", () => {
  const yaml = `site: PS1
backup:
  destinaton: /srv/backup
  retentionWindow: 5x
  password: hunter2
databases:
  - { name: site, kind: postgress, url: "postgres://a@b/c" }
writers:
  - { name: app, freeze: "true" }
`;
  const p = problems(yaml);
  const find = (re: RegExp): string => p.find((x) => re.test(x)) ?? assert.fail(`no problem matching ${re} in\n${p.join("\n")}`);
  assert.match(find(/destinaton/), /^3:3 .*did you mean "destination"/);
  assert.match(find(/backup\.destination: is required/), /destination: \/srv/);
  assert.match(find(/retentionWindow/), /^4:20 .*not a duration/);
  assert.match(find(/"password"/), /^5:3 .*secrets are never written/);
  assert.match(find(/postgress/), /^7:25 .*expected one of sqlite, postgres/);
  assert.match(find(/writers\[0\]\.thaw/), /is required/);
  assert.equal(p.length, 6, p.join("\n"));
});

test("YAML syntax errors carry their position", () => {
  const p = problems("site: PS1\nbackup:\n  destination: [unclosed\n");
  assert.ok(p.length >= 1);
  assert.match(p[0], /^\d+:\d+ : YAML:/);
});

test("${ENV} references are expanded; an unset one is an error; $${X} is a literal", () => {
  const yaml = `site: PS1
backup:
  destination: \${DEST}
captures:
  - { name: x, export: "echo $\${HOME} \${MISSING}" }
`;
  const p = problems(yaml, { DEST: "/srv/b" });
  assert.equal(p.length, 1);
  assert.match(p[0], /^5:.*MISSING is not set/);
  const ok = parseControlFile(yaml.replace(" ${MISSING}", ""), "s.yaml", { DEST: "/srv/b" });
  assert.equal(ok.config.backup.destination, "/srv/b");
  assert.equal(ok.config.captures[0].export, "echo ${HOME}");
  assert.match(ok.text, /\$\{DEST\}/, "the text kept for the manifest is the file as written");
});

test("impossible values: schedule rarer than the retention window, destination inside a backed-up folder", () => {
  const p = problems(`site: PS1
backup:
  destination: /srv/backup/PS1
  schedule: "0 2 1 * *"
files:
  - { path: /srv }
`);
  assert.equal(p.length, 2, p.join("\n"));
  assert.match(p[0], /^3:16 backup\.destination: .*inside the backed-up folder \/srv/);
  assert.match(p[1], /^4:13 backup\.schedule: runs as rarely as every 31d, longer than retentionWindow 5d/);
  assert.match(problems(minimal.replace("destination", 'schedule: "61 * * * *"\n  destination'))[0], /not a cron expression/);
});

test("hook scripts must exist, be executable and not writable by others", () => {
  const dir = mkdtempSync(join(tmpdir(), "sitekeep-cf-"));
  try {
    const hook = join(dir, "hook.sh");
    const yaml = `${minimal}  afterBackup: ${hook}\n`;
    assert.match(problems(yaml)[0], /^4:16 backup\.afterBackup: .*does not exist/);
    writeFileSync(hook, "#!/bin/sh\n");
    chmodSync(hook, 0o644);
    assert.match(problems(yaml)[0], /not executable \| chmod 700/);
    chmodSync(hook, 0o777);
    assert.match(problems(yaml)[0], /writable by other users \(mode 777\)/);
    chmodSync(hook, 0o700);
    assert.deepEqual(problems(yaml), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("passwords in URLs are refused; names must be unique; pathsFrom names a declared database", () => {
  const p = problems(`site: PS1
backup:
  destination: /b
databases:
  - { name: site, kind: postgres, url: "postgres://u:secret@h/site" }
  - { name: site, kind: sqlite, path: /x.db }
files:
  - { pathsFrom: { database: nope, query: "select 1" } }
`);
  assert.equal(p.length, 3, p.join("\n"));
  assert.ok(p.some((x) => /^5:.*holds a password/.test(x)));
  assert.ok(p.some((x) => /^6:.*used twice/.test(x)));
  assert.ok(p.some((x) => /^8:.*no database named "nope"/.test(x)));
});

test("durations and cron gaps", () => {
  assert.equal(parseDurationMs("90s"), 90_000);
  assert.equal(parseDurationMs("1h30m"), 5_400_000);
  assert.equal(parseDurationMs("5d"), 432_000_000);
  assert.equal(parseDurationMs("60"), undefined);
  assert.equal(parseDurationMs("5 d"), undefined);
  const from = new Date("2026-01-05T00:00:00Z");
  assert.equal(cronMaxGapMs("0 2 * * 1,4", "UTC", from), 4 * 86_400_000);
  assert.equal(cronMaxGapMs("0 2 * * *", "UTC", from), 86_400_000);
  assert.equal(cronMaxGapMs("not cron", "UTC", from), "invalid");
});

test("the published JSON Schema (schema/sitekeep.schema.json) is the one the code validates with", () => {
  const file = fileURLToPath(new URL("../../schema/sitekeep.schema.json", import.meta.url));
  const published = JSON.parse(readFileSync(file, "utf8")) as unknown;
  assert.deepEqual(published, controlFileJSONSchema(), "run `npm run schema` to regenerate it");
});

test("appendOnly and objectLock: accepted where they can work, refused with the reason where they cannot", () => {
  const { config } = parseControlFile(
    `site: PS1
backup:
  destination: s3:https://s3.example.com/bucket/ps1
  appendOnly: true
  objectLock: { days: 30 }
`,
    "s.yaml",
    {},
  );
  assert.equal(config.backup.appendOnly, true);
  assert.deepEqual(config.backup.objectLock, { mode: "governance", days: 30 });
  assert.equal(parseControlFile(minimal, "s.yaml", {}).config.backup.appendOnly, false);
  const bad = problems(`site: PS1
backup:
  destination: /srv/backup/PS1
  appendOnly: true
  retention: { keepDaily: 7 }
`);
  assert.ok(bad.some((p) => /backup\.retention: retention removes snapshots, which appendOnly: true forbids/.test(p)), bad.join("\n"));
  const zero = problems(`site: PS1
backup:
  destination: s3:https://s3.example.com/bucket/ps1
  objectLock: { mode: compliance, days: 0 }
`);
  assert.ok(zero.some((p) => /backup\.objectLock\.days/.test(p)), zero.join("\n"));
  const local = problems(`site: PS1
backup:
  destination: /srv/backup/PS1
  objectLock: { days: 7 }
`);
  assert.ok(local.some((p) => /backup\.destination: objectLock needs S3 destinations/.test(p)), local.join("\n"));
});
