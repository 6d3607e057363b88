// The web console end to end (issue #8): `sitekeep demo` builds a real site with two snapshots, the
// service runs in-process on 127.0.0.1 with a console password, and Debian's Chromium (driven by
// playwright-core, headless, no downloaded browser) uses the console the way an operator does:
// log in, run a backup and watch its status messages arrive live, change the schedule (preview,
// field error, save with comments and the .prev file kept), browse a snapshot and restore a deleted
// file to its original path, download it, close an alert; and the refusals: wrong password, no
// session, a cross-site page posting to the API with the operator's cookie, a POST without the CSRF
// header. Every view is screenshotted into test-artifacts/console/; the page never talks to another
// origin and its JS+CSS stay small.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { type Browser, type BrowserContext, type Page, type Response, chromium } from "playwright-core";
import { parse } from "yaml";
import { SiteService } from "../src/service/service.js";
import { REPO_ROOT, type TempDir, describeRun, runSitekeep, tempDir } from "./helpers/run.js";

// In-process runs read these from process.env (scrypt cost of the repository key).
process.env.SITEKEEP_SCRYPT_N = "1024";

const ARTIFACTS = join(REPO_ROOT, "test-artifacts", "console");
const DOCS_SHOT = join(REPO_ROOT, "docs", "console-overview.png");
const SITE = "DEMO";

let tmp: TempDir | undefined;
let svc: SiteService | undefined;
let browser: Browser | undefined;
let context: BrowserContext | undefined;
let evil: Server | undefined;
let page: Page;
let base = "";
let token = "";
let demoDir = "";
let configPath = "";
let consolePassword = "";
const serviceLog: Record<string, unknown>[] = [];

// What the console pages did on the network and which errors they threw.
const requested: string[] = [];
const assetSizes = new Map<string, Promise<number>>();
const pageErrors: string[] = [];
let loads = 0;

function record(p: Page): void {
  p.on("request", (r) => requested.push(r.url()));
  p.on("response", (r: Response) => {
    const type = r.request().resourceType();
    if ((type === "script" || type === "stylesheet") && !assetSizes.has(r.url())) {
      assetSizes.set(
        r.url(),
        r
          .request()
          .sizes()
          .then((s) => s.responseBodySize),
      );
    }
  });
  p.on("pageerror", (e) => pageErrors.push(e.message));
}

async function shot(p: Page, name: string): Promise<string> {
  const file = join(ARTIFACTS, `${name}.png`);
  // The console focuses <main> after each navigation (for screen readers); its focus ring is not part of the view.
  if (await p.locator("main:focus").count()) await p.locator("main").blur();
  await p.screenshot({ path: file, fullPage: true });
  return file;
}

async function api(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown; headers: Headers }> {
  const res = await fetch(base + path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, json, headers: res.headers };
}

interface RunRow {
  id: string;
  kind: string;
  status: string;
}

async function runs(): Promise<RunRow[]> {
  const r = await api("GET", "/api/runs?limit=1000");
  assert.equal(r.status, 200);
  return r.json as RunRow[];
}

/** Goes to a view by clicking its link in the navigation bar (a hash change: no page load). */
async function nav(name: string): Promise<void> {
  await page.locator("#nav").getByRole("link", { name, exact: true }).click();
}

/** Polls `cond` until it holds (the page updates asynchronously). */
async function until(cond: () => Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface ComputedStyles {
  getComputedStyle(el: unknown): { color: string; backgroundColor: string };
}

/** WCAG contrast ratio of two opaque CSS colours "rgb(r, g, b)". */
function contrast(a: string, b: string): number {
  const lum = (css: string): number => {
    const [r, g, bl] = (css.match(/\d+(\.\d+)?/g) ?? []).slice(0, 3).map((x) => {
      const c = Number(x) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * bl;
  };
  const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  tmp = await tempDir("console");
  demoDir = join(tmp.path, "demo");
  process.env.SITEKEEP_CACHE_DIR = join(tmp.path, "cache");
  const demo = await runSitekeep(["demo", demoDir], {
    env: { HOME: tmp.path, SITEKEEP_CACHE_DIR: join(tmp.path, "cache"), SITEKEEP_SCRYPT_N: "1024" },
  });
  assert.equal(demo.code, 0, describeRun(demo));

  // The console password, and a service section; a comment inside backup: must survive an edit.
  configPath = join(demoDir, "sitekeep.yaml");
  consolePassword = `console-${randomBytes(9).toString("base64url")}`;
  const pwFile = join(demoDir, "console.password");
  writeFileSync(pwFile, consolePassword + "\n", { mode: 0o600 });
  const original = readFileSync(configPath, "utf8");
  assert.match(original, /^ {2}schedule: "0 2 \* \* \*"$/m);
  writeFileSync(
    configPath,
    original.replace(/^ {2}schedule:/m, "  # nightly, while nobody works on the site\n  schedule:") +
      `# The web console (sitekeep serve)\nservice:\n  passwordFile: ${JSON.stringify(pwFile)}\n  catchUp: false\n`,
  );

  svc = await SiteService.start({
    configPath,
    listen: "127.0.0.1:0",
    log: (e) => serviceLog.push(e),
    env: { ...process.env },
  });
  base = svc.url;
  token = readFileSync(join(demoDir, "state", "service.token"), "utf8").trim();

  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  context = await browser.newContext({
    viewport: { width: 1280, height: 860 },
    acceptDownloads: true,
    locale: "en-GB",
    timezoneId: "UTC",
  });
  context.setDefaultTimeout(15_000);
  page = await context.newPage();
  record(page);
  page.on("load", () => loads++);
});

after(async () => {
  await browser?.close().catch(() => undefined);
  await new Promise<void>((resolve) => (evil ? evil.close(() => resolve()) : resolve()));
  await svc?.stop().catch(() => undefined);
  await tmp?.cleanup();
});

test("login with the console password: the overview shows the health banner", async () => {
  // Without a session the console itself sends the browser to the login page.
  await page.goto(base + "/");
  assert.equal(new URL(page.url()).pathname, "/login");
  await page.locator("#password").waitFor();
  await shot(page, "login");

  await page.locator("#password").fill(consolePassword);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(base + "/#/overview");
  const health = page.locator("#health");
  await health.waitFor();
  assert.match((await health.getAttribute("class")) ?? "", /\bgreen\b/);
  assert.match(await health.innerText(), /Healthy/);
  assert.equal(await page.locator("#site").innerText(), SITE);
  assert.match(await page.locator("h1").innerText(), new RegExp(`Site ${SITE}`));

  const cookie = (await context!.cookies(base)).find((c) => c.name === "sitekeep_session");
  assert.ok(cookie, "a session cookie is set");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");

  const file = await shot(page, "overview");
  // The README shows this one; refreshed only on request so test runs do not dirty the work tree.
  if (!existsSync(DOCS_SHOT) || process.env.SITEKEEP_UPDATE_SCREENSHOTS) copyFileSync(file, DOCS_SHOT);
});

test("run now: status message 5035 appears in the live list without a page reload", async () => {
  const before = await runs();
  const loadsBefore = loads;
  await page.evaluate(() => {
    (globalThis as Record<string, unknown>).__sitekeepE2E = "same document";
  });
  await nav("Run now");
  await page.waitForURL(base + "/#/run");
  const button = page.locator("#run-now");
  await button.waitFor();
  assert.equal(await button.isEnabled(), true);
  await button.click();

  await page
    .locator("#live li", { hasText: /^5035 I Backup of site DEMO completed/ })
    .waitFor({ timeout: 30_000 });
  await page.locator("#run-state .badge.succeeded").waitFor();
  const lines = await page.locator("#live li").allInnerTexts();
  assert.ok(
    lines.some((l) => l.startsWith("5055 I")),
    `the start message is listed too: ${lines.join(" | ")}`,
  );
  assert.ok(
    lines.findIndex((l) => l.startsWith("5055")) < lines.findIndex((l) => l.startsWith("5035")),
    "in order",
  );
  assert.equal(await button.isEnabled(), true, "the button is enabled again when the run ended");

  // Same document, no load event since: the list was updated in place.
  assert.equal(
    await page.evaluate(() => (globalThis as Record<string, unknown>).__sitekeepE2E),
    "same document",
  );
  assert.equal(loads, loadsBefore);
  await shot(page, "run");

  const after = await runs();
  assert.equal(after.length, before.length + 1);
  assert.equal(after[0].kind, "backup");
  assert.equal(after[0].status, "succeeded");
  assert.match(await page.locator("#run-state").innerText(), new RegExp(escapeRe(after[0].id)));
});

test("backup task: schedule preview, a field error for an invalid value, save keeps comments and .prev, the service reschedules", async () => {
  const original = readFileSync(configPath);
  const prev = `${configPath}.prev`;
  assert.equal(existsSync(prev), false);

  await nav("Backup task");
  const schedule = page.locator("#schedule");
  await schedule.waitFor();
  assert.equal(await schedule.inputValue(), "0 2 * * *");
  const items = page.locator("#preview li");
  await page.locator("#preview li:nth-child(5)").waitFor();
  const previewBefore = await items.allInnerTexts();

  // An invalid schedule: the preview says so, saving shows the error next to the field, nothing is written.
  await schedule.fill("not cron");
  await page.locator("#preview li.field-error").waitFor();
  await page.locator("#save").click();
  const fieldError = page.locator("#err-schedule");
  await page.locator("#err-schedule:not(:empty)").waitFor();
  assert.match(await fieldError.innerText(), /"not cron" is not a cron expression/);
  await page.locator("form ~ div .notice.bad").waitFor();
  assert.deepEqual(readFileSync(configPath), original, "the control file is unchanged");
  assert.equal(existsSync(prev), false, "no .prev: nothing was saved");

  // A valid one: the preview shows the service's next occurrences of the new schedule.
  await schedule.fill("30 3 * * *");
  await until(async () => {
    const texts = await page.locator("#preview li:not(.field-error)").allInnerTexts();
    return texts.length === 5 && texts.join("|") !== previewBefore.join("|");
  }, "the preview shows the new schedule's next runs");
  const expected = await api(
    "GET",
    `/api/schedule/preview?cron=${encodeURIComponent("30 3 * * *")}&timezone=local`,
  );
  assert.equal(expected.status, 200);
  const nextIso = (expected.json as { next: string[] }).next;
  const shown = await items.allInnerTexts();
  assert.deepEqual(
    shown,
    await page.evaluate((list: string[]) => list.map((d) => new Date(d).toLocaleString()), nextIso),
  );
  await page.locator("#save").click();
  const saved = page.locator(".notice.ok", { hasText: /^Saved / });
  await saved.waitFor();
  await shot(page, "task");
  assert.match(await saved.innerText(), new RegExp(escapeRe(`${configPath}.prev`)));
  assert.equal(await page.locator("#err-schedule").innerText(), "");

  // On disk: the new schedule, the comments kept, the previous version beside it.
  const text = readFileSync(configPath, "utf8");
  const doc = parse(text) as {
    backup: { schedule: string; passwordFile: string; destination: string };
    service: { passwordFile: string };
  };
  assert.equal(doc.backup.schedule, "30 3 * * *");
  assert.equal(doc.backup.destination, join(demoDir, "backup"));
  assert.equal(doc.service.passwordFile, join(demoDir, "console.password"));
  for (const comment of [
    "# Sitekeep control file of the demo site (see docs/control-file.md)",
    "# nightly, while nobody works on the site",
    "# The web console (sitekeep serve)",
  ]) {
    assert.ok(text.includes(comment), `comment kept: ${comment}\n${text}`);
  }
  assert.deepEqual(readFileSync(prev), original, "sitekeep.yaml.prev is the file before the save");
  assert.equal(statSync(configPath).mode & 0o777, 0o600, "the file keeps its mode");

  // The service reloaded it: its next backup is the schedule's next occurrence (03:30 local).
  const status = await api("GET", "/api/status");
  assert.equal(status.status, 200);
  const next = (status.json as { next_runs: { backup: string } }).next_runs.backup;
  assert.equal(next, nextIso[0]);
  const at = new Date(next);
  assert.deepEqual([at.getHours(), at.getMinutes()], [3, 30]);
  assert.ok(at.getTime() > Date.now() && at.getTime() <= Date.now() + 24 * 3600_000);

  // The overview shows it too.
  await nav("Overview");
  await page.locator("#next-backup").waitFor();
  assert.equal(
    await page.locator("#next-backup").innerText(),
    await page.evaluate((d: string) => new Date(d).toLocaleString(), next),
  );
});

test("snapshot browser: download a file, delete it on disk, restore it to its original path", async () => {
  const appConf = join(demoDir, "site", "app", "config", "app.conf");
  const bytes = readFileSync(appConf);
  const mode = statSync(appConf).mode;

  await nav("Snapshots");
  await page.locator("#snapshots").waitFor();
  const links = page.locator("#snapshots tbody a");
  assert.equal(await links.count(), 3, "two demo snapshots and the one from Run now");
  await links.first().click();
  await page.locator("#tree").waitFor();

  // Folder by folder from the root down to the site's app/config.
  const segments = join(demoDir, "site", "app", "config").split("/").filter(Boolean);
  for (const [i, seg] of segments.entries()) {
    await page
      .locator("#tree")
      .getByRole("link", { name: `${seg}/`, exact: true })
      .click();
    await page.waitForURL((u) => u.hash.endsWith("/" + segments.slice(0, i + 1).join("/")));
  }
  const row = page.locator("#tree tbody tr", {
    has: page.getByRole("button", { name: "app.conf", exact: true }),
  });
  await row.waitFor();
  assert.deepEqual(await page.locator("#tree tbody tr td:nth-child(2)").allInnerTexts(), [
    "app.conf",
    "database.conf",
  ]);

  // View it in the page.
  await row.getByRole("button", { name: "app.conf" }).click();
  assert.equal(await page.locator("#file-view").textContent(), bytes.toString("utf8"));

  // The download link, clicked in the browser and fetched with the session: the snapshot's bytes.
  const link = row.getByRole("link", { name: "download" });
  const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
  assert.equal(download.suggestedFilename(), "app.conf");
  assert.deepEqual(readFileSync(await download.path()), bytes);
  const href = await link.getAttribute("href");
  assert.ok(href);
  const fetched = await page.request.get(new URL(href, base).href);
  assert.equal(fetched.status(), 200);
  assert.deepEqual(await fetched.body(), bytes);
  assert.match(fetched.headers()["content-disposition"] ?? "", /attachment/);

  // Select it, lose it, restore it where it was.
  await row.getByRole("checkbox", { name: "select app.conf" }).check();
  assert.equal(
    await page.locator("#restore-target").inputValue(),
    "",
    "empty target means the original path",
  );
  await shot(page, "snapshots");
  rmSync(appConf);
  assert.equal(existsSync(appConf), false);
  await page.locator("#restore-selected").click();
  const result = page.locator("#restore-result .notice");
  await result.waitFor();
  assert.match(await result.innerText(), /^Restored 1 file\(s\)/);
  assert.equal(existsSync(appConf), true, "the file is back at its original path");
  assert.deepEqual(readFileSync(appConf), bytes, "with the snapshot's bytes");
  assert.equal(statSync(appConf).mode, mode, "and its mode");
  // Nothing else was written beside it.
  assert.equal(existsSync(join(demoDir, "site", "app", "config", "database.conf")), true);
});

test("snapshot browser: the breadcrumbs link every folder of the path", async () => {
  const snaps = await api("GET", "/api/snapshots");
  assert.equal(snaps.status, 200);
  const id = (snaps.json as { id: string }[])[0].id;
  const segments = join(demoDir, "site", "app", "config").split("/").filter(Boolean);
  await page.goto(`${base}/#/snapshots/${id}/${segments.join("/")}`);
  await page.locator("#tree").getByRole("button", { name: "app.conf", exact: true }).waitFor();
  const crumbs = page.locator("nav.crumbs");
  assert.doesNotMatch(
    await crumbs.innerText(),
    /\[object |https?:\/\//,
    "no stringified DOM nodes in the path",
  );
  assert.deepEqual(await crumbs.locator("a").allInnerTexts(), ["/", ...segments], "one link per folder");
  // Up one level with the breadcrumb.
  await crumbs.getByRole("link", { name: "app", exact: true }).click();
  await page.locator("#tree").getByRole("link", { name: "config/", exact: true }).waitFor();
});

test("snapshot browser: file names are readable (not white on white)", async () => {
  // Still in app/config from the previous test; go there if not.
  const name = page.locator("#tree").getByRole("button", { name: "app.conf", exact: true });
  if (!(await name.count())) {
    const id = ((await api("GET", "/api/snapshots")).json as { id: string }[])[0].id;
    await page.goto(`${base}/#/snapshots/${id}${join(demoDir, "site", "app", "config")}`);
  }
  await name.waitFor();
  const color = await name.evaluate(
    (el) => (globalThis as unknown as ComputedStyles).getComputedStyle(el).color,
  );
  const background = await page
    .locator("#tree")
    .evaluate((el) => (globalThis as unknown as ComputedStyles).getComputedStyle(el).backgroundColor);
  const ratio = contrast(color, background);
  assert.ok(ratio >= 3, `file name ${color} on ${background}: contrast ${ratio.toFixed(2)}:1`);
});

test("login page: the navigation is hidden until logged in", async () => {
  const fresh = await browser!.newContext({ viewport: { width: 1280, height: 860 } });
  try {
    const p = await fresh.newPage();
    record(p);
    await p.goto(base + "/login");
    await p.locator("#password").waitFor();
    assert.equal(await p.locator("#nav").getAttribute("hidden"), "", "the console marks it hidden");
    assert.equal(await p.locator("#nav").isVisible(), false, "and it is not shown");
  } finally {
    await fresh.close();
  }
});

test("alerts: an open alert is closed from the console and disappears", async () => {
  const { alert, opened } = svc!.store.openAlert({
    site: SITE,
    kind: "e2e-console",
    severity: "warning",
    text: "E2E: an alert the operator closes in the console",
  });
  assert.equal(opened, true);

  // The overview turns amber and names it.
  await nav("Overview");
  await page.locator("#health.amber").waitFor();
  assert.match(await page.locator("#health").innerText(), /an alert the operator closes/);

  await nav("Alerts");
  const row = page.locator(`#alerts tr[data-alert="${alert.id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /warning e2e-console/);
  await shot(page, "alerts");
  await row.getByRole("button", { name: "Close", exact: true }).click();
  await row.waitFor({ state: "detached" });
  await page.locator("#no-alerts").waitFor();

  const open = await api("GET", "/api/alerts");
  assert.equal(open.status, 200);
  assert.equal(
    (open.json as { id: number }[]).some((a) => a.id === alert.id),
    false,
  );
  const all = await api("GET", "/api/alerts?all");
  const closed = (all.json as { id: number; closed_at: string | null; closed_by: string | null }[]).find(
    (a) => a.id === alert.id,
  );
  assert.ok(closed);
  assert.ok(closed.closed_at, "closed");
  assert.equal(closed.closed_by, "operator");
});

test("status messages and drills views", async () => {
  await nav("Status messages");
  await page.locator("#f-id").waitFor();
  await page.locator("table tbody tr").first().waitFor();
  await page.locator("#f-id").fill("5035");
  const ids = await page.locator("table tbody tr td:nth-child(2)").allInnerTexts();
  assert.ok(ids.length >= 3, `5035 of three backups: ${ids.join(", ")}`);
  assert.ok(ids.every((i) => i === "5035 I"));
  await page.locator("#f-id").fill("");
  await shot(page, "messages");

  await nav("Drills");
  await page.locator("#run-drill").waitFor();
  assert.equal(await page.locator("main h1").innerText(), "Drills");
  await shot(page, "drills");
});

test("snapshots: compare two snapshots; recover: a dry-run plan, then a real recovery of a deleted file", async () => {
  await nav("Snapshots");
  await page.locator("#snapshots tbody tr").first().waitFor();
  const boxes = page.locator("#snapshots tbody input[type=checkbox]");
  const n = await boxes.count();
  assert.ok(n >= 2);
  // The oldest two are the demo's own backups, between which it changed app.conf.
  await boxes.nth(n - 1).check();
  await boxes.nth(n - 2).check();
  await page.locator("#compare").click();
  await page.locator("#diff tbody tr").first().waitFor();
  const changed = await page.locator("#diff tbody td.mono").allInnerTexts();
  assert.ok(changed.some((p) => p.endsWith("/site/app/config/app.conf")), `app.conf changed between the demo's two backups: ${changed.join(", ")}`);
  await shot(page, "compare");

  const conf = join(demoDir, "site", "app", "config", "database.conf");
  const before = readFileSync(conf);
  unlinkSync(conf);
  await nav("Recover");
  await page.locator("#rc-go").waitFor();
  await page.locator("#rc-databases").uncheck();
  await page.locator("#rc-go").click();
  await page.locator("#rc-report .notice").waitFor();
  assert.match(await page.locator("#rc-report .notice").innerText(), /Plan only/);
  assert.equal(existsSync(conf), false, "a plan changes nothing");
  await shot(page, "recover-plan");
  await page.locator("#rc-dry").uncheck();
  page.once("dialog", (d) => void d.accept());
  await page.locator("#rc-go").click();
  // The report replaces "working…" once the run has ended; whatever it says is in the message.
  const report = page.locator("#rc-report");
  await until(async () => (await report.locator(".notice").count()) > 0 && !/Plan only|working/.test(await report.innerText()), "the recovery to finish", 30_000);
  const said = await report.innerText();
  assert.match(said, /Recovered\./, `the console's report: ${said}`);
  assert.deepEqual(readFileSync(conf), before, "the deleted file is back with the same bytes");
});

test("refusals: wrong password, no session, cross-site posts, missing CSRF header", async () => {
  const runsBefore = (await runs()).length;

  // A wrong password: an error, still on the login page, no session cookie.
  const fresh = await browser!.newContext({ viewport: { width: 1280, height: 860 } });
  try {
    const p = await fresh.newPage();
    record(p);
    await p.goto(base + "/login");
    await p.locator("#password").fill("not-the-password");
    await p.getByRole("button", { name: "Log in" }).click();
    const err = p.locator("[role=alert] .notice.bad");
    await err.waitFor();
    assert.match(await err.innerText(), /wrong password/);
    assert.equal(new URL(p.url()).pathname, "/login");
    assert.deepEqual(await fresh.cookies(), []);
    await shot(p, "login-refused");
  } finally {
    await fresh.close();
  }

  // No token and no cookie: 401 from the API, the console redirects to /login.
  const anon = await fetch(base + "/api/status");
  assert.equal(anon.status, 401);
  assert.match(anon.headers.get("www-authenticate") ?? "", /^Bearer/);
  assert.equal((await fetch(base + "/api/runs", { method: "POST", body: "{}" })).status, 401);
  const root = await fetch(base + "/", { redirect: "manual" });
  assert.equal(root.status, 302);
  assert.equal(root.headers.get("location"), "/login");
  // Logging in from another origin is refused too.
  const crossLogin = await fetch(base + "/api/session", {
    method: "POST",
    headers: { origin: "http://127.0.0.1:1", "content-type": "application/json" },
    body: JSON.stringify({ password: consolePassword }),
  });
  assert.equal(crossLogin.status, 403);
  assert.equal(crossLogin.headers.get("set-cookie"), null);

  // A page on another origin (127.0.0.1 on another port: same site, so the SameSite=Strict cookie
  // IS sent and only the Origin/CSRF checks stand in the way; and localhost: another site).
  evil = createServer((req, res) => {
    const target = `${base}/api/runs`;
    const post = (mode: string): string =>
      `<!doctype html><title>elsewhere</title><script>fetch(${JSON.stringify(target)}, { method: "POST", mode: "${mode}", credentials: "include", body: JSON.stringify({ kind: "backup" }) }).then((r) => { document.title = "status " + r.status; }, (e) => { document.title = "failed " + e; });</script>`;
    const html =
      req.url === "/form"
        ? // text/plain form whose body is valid JSON: {"kind":"backup","pad":"="}
          `<!doctype html><form method="POST" action="${target}" enctype="text/plain"><input name='{"kind":"backup","pad":"' value='"}'></form><script>document.forms[0].submit()</script>`
        : post(req.url === "/cors" ? "cors" : "no-cors");
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(html);
  });
  await new Promise<void>((resolve) => evil!.listen(0, "127.0.0.1", () => resolve()));
  const evilPort = (evil.address() as AddressInfo).port;
  /** Opens a page of the other origin in the logged-in browser; the status of its POST /api/runs (0: the browser blocked the response). */
  const postFrom = async (url: string): Promise<number> => {
    const p = await context!.newPage();
    try {
      const isPost = (r: { url(): string; method(): string }): boolean =>
        r.url() === `${base}/api/runs` && r.method() === "POST";
      const outcome = new Promise<number>((resolve) => {
        p.on("response", (r) => isPost(r.request()) && resolve(r.status()));
        p.on("requestfailed", (r) => isPost(r) && resolve(0));
      });
      await p.goto(url);
      return await outcome;
    } finally {
      await p.close();
    }
  };
  // Same site (the cookie is sent): refused by the Origin/CSRF check.
  assert.equal(await postFrom(`http://127.0.0.1:${evilPort}/`), 403, "no-cors fetch with the cookie");
  assert.equal(
    await postFrom(`http://127.0.0.1:${evilPort}/form`),
    403,
    "auto-submitted form with the cookie",
  );
  assert.ok(
    [0, 403].includes(await postFrom(`http://127.0.0.1:${evilPort}/cors`)),
    "cors-mode fetch (response hidden from the page)",
  );
  // Another site (localhost): the SameSite=Strict cookie is not even sent.
  assert.equal(await postFrom(`http://localhost:${evilPort}/`), 401, "cross-site fetch");
  assert.equal(await postFrom(`http://localhost:${evilPort}/form`), 401, "cross-site form");
  assert.equal(svc!.activeRun, undefined, "no run was started");
  assert.equal((await runs()).length, runsBefore, "GET /api/runs: no new run");

  // With the session cookie but without the CSRF header (or with it but from another origin): 403.
  const session = await page.request.get(base + "/api/session");
  assert.equal(session.status(), 200, "the request API carries the browser's session");
  const csrf = ((await session.json()) as { csrf: string }).csrf;
  assert.equal((await page.request.post(base + "/api/runs", { data: { kind: "backup" } })).status(), 403);
  assert.equal(
    (
      await page.request.post(base + "/api/runs", {
        data: { kind: "backup" },
        headers: { "x-csrf-token": "x".repeat(csrf.length) },
      })
    ).status(),
    403,
  );
  assert.equal(
    (
      await page.request.post(base + "/api/runs", {
        data: { kind: "backup" },
        headers: { "x-csrf-token": csrf, origin: `http://127.0.0.1:${evilPort}` },
      })
    ).status(),
    403,
  );
  assert.equal((await page.request.post(base + "/api/alerts/999999/close")).status(), 403);
  // Control: the same harmless POST with the header gets past the check (404: no such alert).
  assert.equal(
    (
      await page.request.post(base + "/api/alerts/999999/close", { headers: { "x-csrf-token": csrf } })
    ).status(),
    404,
  );

  assert.equal(svc!.activeRun, undefined, "no run was started");
  assert.equal((await runs()).length, runsBefore, "GET /api/runs: no new run");
});

test("the console talks only to its own origin, and its JS+CSS are small", async (t) => {
  const origin = new URL(base).origin;
  assert.ok(requested.length > 20, `requests recorded: ${requested.length}`);
  const foreign = requested.filter((u) => new URL(u).origin !== origin);
  assert.deepEqual(foreign, []);
  const sizes = await Promise.all(
    [...assetSizes.entries()].map(async ([u, s]) => [new URL(u).pathname, await s] as const),
  );
  assert.deepEqual(sizes.map(([p]) => p).sort(), ["/assets/app.js", "/assets/style.css"]);
  const total = sizes.reduce((n, [, s]) => n + s, 0);
  t.diagnostic(
    `${requested.length} requests, all to ${origin}; ${sizes.map(([p, n]) => `${p} ${n} B`).join(", ")}; total ${total} B`,
  );
  assert.ok(total > 0 && total < 300 * 1024, `JS+CSS ${total} bytes`);
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
});
