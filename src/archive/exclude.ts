// Exclude patterns with restic's meaning: a glob matched against the whole path when it starts
// with "/", else against any trailing part of the path ("*.tmp", "logs/**", "cache").
// "*" and "?" stay inside one path element, "**" crosses elements, "[...]" is a class.

export type PathMatcher = (path: string) => boolean;

function globToRegex(glob: string): string {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") {
      if (glob[i + 1] === "*") {
        i++;
        if (glob[i + 1] === "/") {
          i++;
          re += "(?:.*/)?";
        } else re += ".*";
      } else re += "[^/]*";
    } else if (c === "?") re += "[^/]";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end < 0) re += "\\[";
      else {
        let cls = glob.slice(i + 1, end);
        if (cls.startsWith("!")) cls = "^" + cls.slice(1);
        re += "[" + cls.replace(/\\/g, "\\\\") + "]";
        i = end;
      }
    } else if (c === "\\" && i + 1 < glob.length) {
      re += "\\" + glob[++i];
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return re;
}

/** The patterns that count (no blanks, no "#" comments), trimmed, without trailing slashes. */
function cleanPatterns(patterns: readonly string[]): string[] {
  return patterns
    .map((p) => p.trim())
    .filter((p) => p && !p.startsWith("#"))
    .map((p) => p.replace(/\/+$/, ""));
}

export function compileExcludes(patterns: readonly string[]): PathMatcher {
  const res = cleanPatterns(patterns).map((clean) =>
    clean.startsWith("/") ? new RegExp("^" + globToRegex(clean) + "$") : new RegExp("(?:^|/)" + globToRegex(clean) + "$"),
  );
  if (res.length === 0) return () => false;
  return (path) => res.some((r) => r.test(path));
}

/**
 * For include patterns: whether something below the folder `dir` (an absolute path) could match
 * one of them. A restore of one item then walks only the folders on its way instead of every
 * folder of the snapshot (a site of a million files loaded every tree to restore one file). Only
 * anchored patterns made of plain elements, "*" and "?" prune; a pattern that can match at any
 * depth (relative, or with "**", a class or an escape) answers true everywhere.
 */
export function compileMayMatchBelow(patterns: readonly string[]): (dir: string) => boolean {
  const anchored: RegExp[][] = [];
  for (const p of cleanPatterns(patterns)) {
    if (!p.startsWith("/") || /\*\*|\[|\\/.test(p)) return () => true;
    anchored.push(p.split("/").filter(Boolean).map((e) => new RegExp("^" + globToRegex(e) + "$")));
  }
  return (dir) => {
    const parts = dir.split("/").filter(Boolean);
    // Below dir lie paths with more elements than dir: the pattern must be longer, and its first
    // elements must match dir's.
    return anchored.some((els) => els.length > parts.length && parts.every((part, i) => els[i].test(part)));
  };
}
