// restic stores a node's name as Go's strconv.Quote output without the surrounding quotes, so that
// names that are not valid UTF-8 survive JSON. We write a form that Go's strconv.Unquote reads back
// to the same bytes, and read every escape Go can produce.

const SIMPLE_ESCAPES: Record<number, string> = {
  0x07: "\\a",
  0x08: "\\b",
  0x0c: "\\f",
  0x0a: "\\n",
  0x0d: "\\r",
  0x09: "\\t",
  0x0b: "\\v",
  0x5c: "\\\\",
  0x22: '\\"',
};

/** Length of the valid UTF-8 sequence at buf[i], or 0 when the byte there does not start one. */
function utf8SeqLen(buf: Uint8Array, i: number): number {
  const b = buf[i];
  let n: number;
  let min: number;
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) {
    n = 2;
    min = 0x80;
  } else if (b >= 0xe0 && b <= 0xef) {
    n = 3;
    min = 0x800;
  } else if (b >= 0xf0 && b <= 0xf4) {
    n = 4;
    min = 0x10000;
  } else return 0;
  if (i + n > buf.length) return 0;
  let cp = b & (0xff >> (n + 1));
  for (let k = 1; k < n; k++) {
    const c = buf[i + k];
    if ((c & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (c & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

export function isValidUtf8(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; ) {
    const n = utf8SeqLen(buf, i);
    if (n === 0) return false;
    i += n;
  }
  return true;
}

/** Quotes raw name bytes the way restic stores them (without the surrounding double quotes). */
export function goQuote(name: Uint8Array): string {
  // Fast path: printable ASCII without quote or backslash, the common case.
  let simple = true;
  for (let i = 0; i < name.length; i++) {
    const b = name[i];
    if (b < 0x20 || b >= 0x7f || b === 0x22 || b === 0x5c) {
      simple = false;
      break;
    }
  }
  if (simple) return Buffer.from(name).toString("latin1");
  let out = "";
  for (let i = 0; i < name.length; ) {
    const b = name[i];
    if (b < 0x80) {
      const esc = SIMPLE_ESCAPES[b];
      if (esc) out += esc;
      else if (b < 0x20 || b === 0x7f) out += "\\x" + b.toString(16).padStart(2, "0");
      else out += String.fromCharCode(b);
      i++;
      continue;
    }
    const n = utf8SeqLen(name, i);
    if (n === 0) {
      out += "\\x" + b.toString(16).padStart(2, "0");
      i++;
    } else {
      const ch = Buffer.from(name.subarray(i, i + n)).toString("utf8");
      const cp = ch.codePointAt(0) as number;
      // Go escapes non-printable runes; these few are the ones that matter for names.
      if ((cp >= 0x80 && cp < 0xa0) || cp === 0xad || cp === 0x2028 || cp === 0x2029 || cp === 0xfeff) {
        out += cp > 0xffff ? "\\U" + cp.toString(16).padStart(8, "0") : "\\u" + cp.toString(16).padStart(4, "0");
      } else out += ch;
      i += n;
    }
  }
  return out;
}

/** Reads a name written by goQuote or by restic back into its raw bytes. */
export function goUnquote(s: string): Buffer {
  if (!s.includes("\\")) return Buffer.from(s, "utf8");
  const parts: Buffer[] = [];
  let lit = "";
  const flush = (): void => {
    if (lit) parts.push(Buffer.from(lit, "utf8"));
    lit = "";
  };
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c !== "\\") {
      lit += c;
      continue;
    }
    const e = s[++i];
    switch (e) {
      case "a": lit += "\x07"; break;
      case "b": lit += "\b"; break;
      case "f": lit += "\f"; break;
      case "n": lit += "\n"; break;
      case "r": lit += "\r"; break;
      case "t": lit += "\t"; break;
      case "v": lit += "\v"; break;
      case "\\": lit += "\\"; break;
      case '"': lit += '"'; break;
      case "'": lit += "'"; break;
      case "x": {
        flush();
        parts.push(Buffer.from([parseInt(s.slice(i + 1, i + 3), 16)]));
        i += 2;
        break;
      }
      case "u":
      case "U": {
        const w = e === "u" ? 4 : 8;
        lit += String.fromCodePoint(parseInt(s.slice(i + 1, i + 1 + w), 16));
        i += w;
        break;
      }
      default: {
        if (e >= "0" && e <= "7") {
          flush();
          parts.push(Buffer.from([parseInt(s.slice(i, i + 3), 8)]));
          i += 2;
          break;
        }
        throw new Error(`invalid escape \\${e} in stored name ${JSON.stringify(s)}`);
      }
    }
  }
  flush();
  return Buffer.concat(parts);
}
