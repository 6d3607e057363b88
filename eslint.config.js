// ESLint flat config: @eslint/js recommended + typescript-eslint recommended (syntax-only, no type
// information, to stay fast). Formatting is Prettier's job (.prettierrc.json), not ESLint's.
import js from "@eslint/js";
import { defineConfig } from "eslint/config";
import tseslint from "typescript-eslint";

// Node globals for plain .js files (TypeScript files get no-undef checking from tsc instead).
const nodeGlobals = Object.fromEntries(
  [
    "process",
    "console",
    "Buffer",
    "URL",
    "URLSearchParams",
    "setTimeout",
    "clearTimeout",
    "setInterval",
    "clearInterval",
    "setImmediate",
    "clearImmediate",
    "queueMicrotask",
    "structuredClone",
    "TextEncoder",
    "TextDecoder",
    "AbortController",
    "AbortSignal",
  ].map((name) => [name, "readonly"]),
);

export default defineConfig(
  { ignores: ["dist/", "build/", "node_modules/", "bench/out/", "test-artifacts/", ".tmp/"] },
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: nodeGlobals,
    },
    rules: {
      "@typescript-eslint/no-unused-vars": [
        "error",
        {
          argsIgnorePattern: "^_",
          varsIgnorePattern: "^_",
          caughtErrorsIgnorePattern: "^_",
          destructuredArrayIgnorePattern: "^_",
        },
      ],
    },
  },
  // The CLI entry is CommonJS (see bin/sitekeep.js for why).
  {
    files: ["bin/**/*.js"],
    languageOptions: { sourceType: "commonjs", globals: { require: "readonly", __dirname: "readonly" } },
    rules: { "@typescript-eslint/no-require-imports": "off" },
  },
  // The web console runs in the browser.
  {
    files: ["console/**/*.js"],
    languageOptions: {
      globals: Object.fromEntries(
        ["window", "document", "location", "sessionStorage", "fetch", "Node", "console", "setTimeout", "clearTimeout", "setInterval", "clearInterval", "TextDecoder", "URL", "encodeURIComponent"].map((n) => [n, "readonly"]),
      ),
    },
  },
);
