// The program's name and version, recorded in snapshots and shown by --version.
export const VERSION = "0.1.0";
export const PROGRAM_VERSION = `sitekeep ${VERSION}`;
