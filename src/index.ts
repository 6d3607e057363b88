// Sitekeep's programmatic API: the same operations the CLI and the service call.
export { loadControlFile, parseControlFile, controlFilePath, ControlFileError } from "./site/control-file.js";
export { controlFileSchema, controlFileJSONSchema, type ControlFile } from "./site/control-schema.js";
export { runSiteBackup, type SiteBackupResult, type SiteManifest } from "./site/task.js";
export { siteStatus, type SiteStatus } from "./site/status.js";
export { MESSAGES, type MessageDef } from "./site/status-messages.js";
export { startWriter, type WriterOptions, type WriterHandle } from "./writer/client.js";
export { SitekeepError, ExitCode } from "./errors.js";
