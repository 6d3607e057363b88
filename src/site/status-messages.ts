// Status messages with fixed IDs (architecture doc section 7; catalog in docs/status-messages.md).
// The IDs are a contract with operators' log watchers: never renumber, only add.

export type Severity = "I" | "W" | "E";

export interface MessageDef {
  id: number;
  severity: Severity;
  /** A short name used in code and in --json output. */
  key: string;
  /** What it means, for the catalog. */
  meaning: string;
}

const defs = [
  { id: 500, severity: "I", key: "component-started", meaning: "The Sitekeep service started." },
  { id: 5055, severity: "I", key: "backup-started", meaning: "A run of the site backup task started." },
  { id: 5056, severity: "I", key: "snapshot-cut", meaning: "Everything was captured and the writers were thawed; the freeze window is in the text." },
  { id: 5035, severity: "I", key: "backup-completed", meaning: "The site backup completed with no errors (warnings are counted in the text)." },
  { id: 5040, severity: "I", key: "after-backup-started", meaning: "The after-backup script was started." },
  { id: 5001, severity: "E", key: "site-busy", meaning: "Another run of this site's backup is still active; this one did not start." },
  { id: 5002, severity: "E", key: "config-invalid", meaning: "The control file has errors; nothing was done." },
  { id: 5003, severity: "E", key: "destination-missing", meaning: "The destination does not exist (it must be created, e.g. mounted, first)." },
  { id: 5004, severity: "E", key: "destination-unwritable", meaning: "The destination cannot be written by the user running Sitekeep." },
  { id: 5005, severity: "E", key: "destination-full", meaning: "The destination has less free space than the run is estimated to need." },
  { id: 5006, severity: "E", key: "destination-foreign", meaning: "The destination holds something that is not a Sitekeep/restic repository." },
  { id: 5007, severity: "E", key: "destination-unusable", meaning: "The repository at the destination cannot be opened (wrong password, damaged, locked)." },
  { id: 5008, severity: "E", key: "database-unreachable", meaning: "A database could not be reached in the preflight." },
  { id: 5009, severity: "E", key: "database-capture-failed", meaning: "Dumping a database failed." },
  { id: 5010, severity: "E", key: "capture-failed", meaning: "A configuration capture's export command failed." },
  { id: 5011, severity: "E", key: "writer-missing", meaning: "A writer's command does not exist, or a required socket writer did not register." },
  { id: 5012, severity: "E", key: "writer-freeze-failed", meaning: "A writer failed to freeze (or timed out); everything frozen was thawed." },
  { id: 5013, severity: "E", key: "writer-thaw-failed", meaning: "A writer's thaw command failed or timed out: the application may still be quiesced." },
  { id: 5014, severity: "E", key: "file-capture-failed", meaning: "Reading the site's files failed." },
  { id: 5015, severity: "W", key: "files-unreadable", meaning: "Some files or folders could not be read; the snapshot was made without them." },
  { id: 5016, severity: "E", key: "paths-discovery-failed", meaning: "A pathsFrom command or query failed." },
  { id: 5017, severity: "E", key: "snapshot-failed", meaning: "Writing the snapshot to the repository failed; earlier snapshots are untouched." },
  { id: 5018, severity: "W", key: "retention-failed", meaning: "Applying the retention policy failed; the new snapshot is safe." },
  { id: 5019, severity: "W", key: "copy-failed", meaning: "Copying the snapshot to a copyTo destination failed; the snapshot is safe." },
  { id: 5020, severity: "W", key: "after-backup-failed", meaning: "The after-backup script failed or timed out; the snapshot is kept." },
  { id: 5021, severity: "E", key: "backup-interrupted", meaning: "The run was interrupted (signal, or the process died); writers were thawed." },
  { id: 5022, severity: "E", key: "backup-failed", meaning: "The run failed for a reason not covered by a more specific message." },
  { id: 5023, severity: "W", key: "retention-window-exceeded", meaning: "The newest good snapshot is older than the retention window." },
  { id: 5070, severity: "I", key: "recovery-started", meaning: "A recovery of the site from a snapshot started (`site recover`)." },
  { id: 5071, severity: "I", key: "recovery-completed", meaning: "The recovery finished: every item was restored and checked; the report names what is left to do." },
  { id: 5072, severity: "E", key: "recovery-failed", meaning: "The recovery finished with failed items (named in the text and the report); what was there before them is untouched." },
  { id: 5080, severity: "I", key: "drill-started", meaning: "A restore drill started: the snapshot is restored into a sandbox." },
  { id: 5081, severity: "I", key: "drill-passed", meaning: "The drill proved the snapshot restores: files verified, databases restored with the manifest's row counts; the time to recover is in the text." },
  { id: 5082, severity: "E", key: "drill-failed", meaning: "The drill could not prove the snapshot restores (the failing items are named); an alert is raised." },
] as const satisfies readonly MessageDef[];

export type MessageKey = (typeof defs)[number]["key"];

export const MESSAGES: readonly MessageDef[] = defs;

const byKey = new Map<string, MessageDef>(defs.map((d) => [d.key, d]));

export function messageDef(key: MessageKey): MessageDef {
  return byKey.get(key) as MessageDef;
}
