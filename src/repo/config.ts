// The repository config file: format version, repository ID and chunker polynomial. Encrypted with
// the master key but, unlike every other unpacked file, never compressed (restic reads it first).

export interface RepoConfig {
  version: number;
  id: string;
  chunker_polynomial: string;
}

export const SUPPORTED_VERSIONS = [1, 2];
