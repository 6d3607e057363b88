// Alert delivery (architecture doc section 7): an alert that opens or closes is sent to every channel
// of the control file's `alerts` section: email (SMTP), webhook (HTTP POST) and command. Each channel
// is tried on its own (all at once), a failure is retried with exponential backoff, and the outcome
// of each is returned as a DeliveryResult: delivery never throws, and this module stores nothing (the
// caller records the results).
//
// Email: `smtp: "smtp://[user@]host[:port][?starttls=...]"` or `"smtps://[user@]host[:port]"`.
//   - smtps:// is TLS from the first byte (default port 465).
//   - smtp:// (default port 587) upgrades with STARTTLS when the server offers it (opportunistic);
//     `?starttls=required` fails unless the upgrade happens, `?starttls=never` never upgrades.
//   - Certificates are always verified (system CAs, plus DeliverOptions.smtpCa).
//   - The user name may be in the URL; the password only in `passwordFile`, never in the URL.
// Webhook: `url` gets a POST; a 2xx answer is success, anything else (including a redirect, which is
//   not followed) a failure. `tokenFile` adds `Authorization: Bearer <token>`. The body depends on the
//   preset, chosen by the URL's host or by a `preset` query parameter (removed before sending):
//   - json (default): application/json
//       { site, alert_id, kind, severity, state, text, message_id, run_id, time }
//     (message_id and run_id are null when the alert has none).
//   - slack (host hooks.slack.com, or ?preset=slack): Slack's incoming-webhook shape { "text": ... }.
//   - ntfy (host ntfy.sh, or ?preset=ntfy): the text as text/plain, with ntfy's Title, Priority
//     (urgent for critical, high for warning, default when closed) and Tags headers.
//   - healthchecks (host hc-ping.com, or ?preset=healthchecks): a ping; an opened critical alert
//     pings URL/fail, a closed alert pings URL (success), an opened warning URL/log (logged, the
//     check's state unchanged); the text is the ping's body.
// Command: run with /bin/sh -c, the notice as JSON (the json preset's body) on stdin, and the
//   variables SITEKEEP_ALERT_ID, _KIND, _SEVERITY, _STATE, _SITE, _MESSAGE_ID, _RUN_ID, _TIME
//   (empty when absent); a non-zero exit or the timeout (60 s) is a failure.
//
// Retries: `retries` more attempts after the first (default 2, so 3 in all), waiting backoffMs,
// then twice that, ... (default 1 s, 2 s). Failures that cannot heal by waiting (a configuration
// error, an HTTP 4xx other than 408/425/429, an SMTP 5xx reply) are not retried.
import { readFile } from "node:fs/promises";
import { rootCertificates } from "node:tls";
import nodemailer from "nodemailer";
import type SMTPTransport from "nodemailer/lib/smtp-transport/index.js";
import { errorMessage } from "../errors.js";
import { VERSION } from "../version.js";
import { describeResult, runCommand } from "./command.js";
import type { ControlFile } from "./control-schema.js";

export interface AlertNotice {
  site: string;
  alertId: number;
  kind: string;
  severity: "critical" | "warning";
  state: "opened" | "closed";
  text: string;
  messageId?: number;
  runId?: string;
  /** ISO 8601 time of the opening or closing. */
  time: string;
}

export type AlertChannel = "email" | "webhook" | "command";

export interface DeliveryResult {
  channel: AlertChannel;
  /** Where it went, without secrets: recipients and SMTP server, the webhook's origin, the command's program. */
  target: string;
  ok: boolean;
  attempts: number;
  /** Why the last attempt failed (when !ok). */
  error?: string;
}

export interface DeliverOptions {
  /** Attempts after the first failed one (default 2: three attempts in all). */
  retries?: number;
  /** Wait before the first retry, doubled for each next one (default 1000 ms). */
  backoffMs?: number;
  /** The command channel's environment (default process.env), to which SITEKEEP_ALERT_* are added. */
  env?: NodeJS.ProcessEnv;
  /** Bound on one attempt (default 30 s for email and webhook, 60 s for the command). */
  timeoutMs?: number;
  /** Extra CA certificate(s) (PEM) trusted for SMTP TLS, besides the system's. */
  smtpCa?: string | Buffer | Array<string | Buffer>;
}

export type AlertsConfig = ControlFile["alerts"];

const DEFAULT_RETRIES = 2;
const DEFAULT_BACKOFF_MS = 1000;
const NETWORK_TIMEOUT_MS = 30_000;
const COMMAND_TIMEOUT_MS = 60_000;
const USER_AGENT = `sitekeep/${VERSION}`;

/** A failure that waiting will not heal: reported at once, not retried. */
class PermanentError extends Error {}

/** Sends one alert notice to every configured channel; never throws for a failed delivery. */
export async function deliverAlert(
  alerts: AlertsConfig,
  notice: AlertNotice,
  opts: DeliverOptions = {},
): Promise<DeliveryResult[]> {
  if (!alerts) return [];
  const jobs: Promise<DeliveryResult>[] = [];
  if (alerts.email) {
    const email = alerts.email;
    jobs.push(
      withRetries("email", emailTarget(email), opts, (timeoutMs) =>
        sendEmail(email, notice, opts, timeoutMs ?? NETWORK_TIMEOUT_MS),
      ),
    );
  }
  if (alerts.webhook) {
    const webhook = alerts.webhook;
    jobs.push(
      withRetries("webhook", webhookTarget(webhook.url), opts, (timeoutMs) =>
        sendWebhook(webhook, notice, timeoutMs ?? NETWORK_TIMEOUT_MS),
      ),
    );
  }
  if (alerts.command) {
    const command = alerts.command;
    jobs.push(
      withRetries("command", commandTarget(command), opts, (timeoutMs) =>
        runAlertCommand(command, notice, opts.env, timeoutMs ?? COMMAND_TIMEOUT_MS),
      ),
    );
  }
  return Promise.all(jobs);
}

// ---- texts ---------------------------------------------------------------------------------------

/** `[Sitekeep PS1] CRITICAL: backup failed (5017)`; RESOLVED when the alert closed. */
export function alertSubject(n: AlertNotice): string {
  const label = n.state === "closed" ? "RESOLVED" : n.severity.toUpperCase();
  const what = n.kind.replace(/[-_]+/g, " ").trim() || "alert";
  return oneLine(
    `[Sitekeep ${n.site}] ${label}: ${what}${n.messageId !== undefined ? ` (${n.messageId})` : ""}`,
  );
}

/** The plain-text body shared by email and ntfy. */
export function alertBody(n: AlertNotice): string {
  const lines = [
    `Site:       ${n.site}`,
    `Alert:      ${n.kind} (${n.severity}, ${n.state}; alert ${n.alertId})`,
    `Message ID: ${n.messageId ?? "-"}`,
    `Run ID:     ${n.runId ?? "-"}`,
    `Time:       ${n.time}`,
    "",
    n.text,
    "",
    n.state === "closed"
      ? `This alert is closed. To see more, run \`sitekeep site status\` on the server of site ${n.site}.`
      : `To see more, run \`sitekeep site status\` on the server of site ${n.site}.`,
  ];
  return lines.join("\n") + "\n";
}

/** The JSON payload (webhook json preset, command stdin). */
export function alertPayload(n: AlertNotice): Record<string, unknown> {
  return {
    site: n.site,
    alert_id: n.alertId,
    kind: n.kind,
    severity: n.severity,
    state: n.state,
    text: n.text,
    message_id: n.messageId ?? null,
    run_id: n.runId ?? null,
    time: n.time,
  };
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, " ");
}

// ---- retries -------------------------------------------------------------------------------------

async function withRetries(
  channel: AlertChannel,
  target: string,
  opts: DeliverOptions,
  attempt: (timeoutMs: number | undefined) => Promise<void>,
): Promise<DeliveryResult> {
  const retries = Math.max(0, Math.floor(opts.retries ?? DEFAULT_RETRIES));
  const backoffMs = Math.max(0, opts.backoffMs ?? DEFAULT_BACKOFF_MS);
  let attempts = 0;
  let error = "";
  for (;;) {
    attempts++;
    try {
      await attempt(opts.timeoutMs);
      return { channel, target, ok: true, attempts };
    } catch (err) {
      error = errorMessage(err);
      if (err instanceof PermanentError || attempts > retries) break;
      await new Promise((resolve) => setTimeout(resolve, backoffMs * 2 ** (attempts - 1)));
    }
  }
  return { channel, target, ok: false, attempts, error };
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what} timed out after ${formatMs(ms)}`));
    }, ms);
  });
  try {
    return await Promise.race([p, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

/** A secret from a file: the first line's content, without the line end. */
async function readSecretFile(file: string, what: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new PermanentError(`cannot read the ${what} file ${file}: ${errorMessage(err)}`);
  }
  const secret = text.replace(/\r?\n[\s\S]*$/, "");
  if (!secret) throw new PermanentError(`the ${what} file ${file} is empty`);
  return secret;
}

// ---- email ---------------------------------------------------------------------------------------

type EmailConfig = NonNullable<AlertsConfig>["email"] & object;

interface SmtpEndpoint {
  secure: boolean;
  host: string;
  port: number;
  user?: string;
  starttls: "opportunistic" | "required" | "never";
}

function parseSmtpUrl(raw: string): SmtpEndpoint {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new PermanentError(`the SMTP URL is not a URL (use smtp://host:port or smtps://host:port)`);
  }
  if (url.protocol !== "smtp:" && url.protocol !== "smtps:")
    throw new PermanentError(`the SMTP URL must start with smtp:// or smtps://, not ${url.protocol}//`);
  if (url.password)
    throw new PermanentError("the SMTP URL must not hold a password: put it in alerts.email.passwordFile");
  if (!url.hostname) throw new PermanentError("the SMTP URL names no host");
  const secure = url.protocol === "smtps:";
  let starttls: SmtpEndpoint["starttls"] = "opportunistic";
  for (const [key, value] of url.searchParams) {
    if (key !== "starttls")
      throw new PermanentError(
        `unknown SMTP URL parameter ${JSON.stringify(key)} (only starttls=required|opportunistic|never)`,
      );
    if (value !== "required" && value !== "opportunistic" && value !== "never")
      throw new PermanentError(`starttls=${value} in the SMTP URL: use required, opportunistic or never`);
    if (secure)
      throw new PermanentError("starttls= applies to smtp:// only (smtps:// is TLS from the start)");
    starttls = value;
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  return {
    secure,
    host,
    port: url.port ? Number(url.port) : secure ? 465 : 587,
    user: url.username ? decodeURIComponent(url.username) : undefined,
    starttls,
  };
}

function emailTarget(email: EmailConfig): string {
  let server: string;
  try {
    const u = new URL(email.smtp);
    server = `${u.protocol}//${u.username ? `${u.username}@` : ""}${u.host}`;
  } catch {
    server = "an invalid SMTP URL";
  }
  return `${email.to.join(", ")} via ${server}`;
}

async function sendEmail(
  email: EmailConfig,
  notice: AlertNotice,
  opts: DeliverOptions,
  timeoutMs: number,
): Promise<void> {
  const ep = parseSmtpUrl(email.smtp);
  let auth: SMTPTransport.Options["auth"];
  if (email.passwordFile) {
    if (!ep.user)
      throw new PermanentError(
        "alerts.email.passwordFile is set but the SMTP URL names no user: use smtp://user@host:port",
      );
    auth = { user: ep.user, pass: await readSecretFile(email.passwordFile, "SMTP password") };
  } else if (ep.user) {
    throw new PermanentError(`the SMTP URL names user ${ep.user} but alerts.email.passwordFile is not set`);
  }
  const extraCa = opts.smtpCa === undefined ? [] : Array.isArray(opts.smtpCa) ? opts.smtpCa : [opts.smtpCa];
  const transport = nodemailer.createTransport({
    host: ep.host,
    port: ep.port,
    secure: ep.secure,
    requireTLS: ep.starttls === "required",
    ignoreTLS: ep.starttls === "never",
    auth,
    tls: extraCa.length ? { ca: [...rootCertificates, ...extraCa] } : {},
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
    dnsTimeout: timeoutMs,
  } satisfies SMTPTransport.Options);
  try {
    await withTimeout(
      transport.sendMail({
        from: email.from,
        to: email.to,
        subject: alertSubject(notice),
        text: alertBody(notice),
        headers: {
          "X-Sitekeep-Site": notice.site,
          "X-Sitekeep-Alert": `${notice.alertId} ${notice.kind} ${notice.state}`,
        },
      }),
      timeoutMs,
      `sending to ${ep.host}:${ep.port}`,
      () => transport.close(),
    );
  } catch (err) {
    throw smtpError(err, ep);
  } finally {
    transport.close();
  }
}

function smtpError(err: unknown, ep: SmtpEndpoint): Error {
  const e = err as { code?: string; responseCode?: number; message?: string };
  let message = `SMTP ${ep.host}:${ep.port}: ${errorMessage(err)}`;
  if (e.code === "ETIMEDOUT" || /timeout/i.test(e.message ?? "")) message += " (timed out)";
  if (ep.starttls === "required" && /STARTTLS/i.test(e.message ?? ""))
    message += " (starttls=required: the server must offer STARTTLS)";
  // 5xx replies (bad credentials, rejected sender or recipient) are permanent by SMTP's own rule.
  if (typeof e.responseCode === "number" && e.responseCode >= 500) return new PermanentError(message);
  return new Error(message);
}

// ---- webhook -------------------------------------------------------------------------------------

type WebhookConfig = NonNullable<AlertsConfig>["webhook"] & object;
type Preset = "json" | "slack" | "ntfy" | "healthchecks";
const PRESETS: readonly Preset[] = ["json", "slack", "ntfy", "healthchecks"];

/** The preset for a webhook URL, and the URL to send to (without the preset parameter). */
export function webhookPreset(raw: string): { preset: Preset; url: URL } {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new PermanentError("the webhook URL is not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new PermanentError(`the webhook URL must be http(s), not ${url.protocol}//`);
  let named: string | undefined;
  // Remove `preset` by hand, leaving the other parameters exactly as written.
  const kept = url.search
    .slice(1)
    .split("&")
    .filter((part) => {
      if (!part) return false;
      const [k, v = ""] = part.split("=", 2);
      if (safeDecode(k) !== "preset") return true;
      named = safeDecode(v);
      return false;
    });
  url.search = kept.length ? `?${kept.join("&")}` : "";
  if (named !== undefined) {
    if (!(PRESETS as readonly string[]).includes(named))
      throw new PermanentError(`unknown webhook preset ${JSON.stringify(named)} (use ${PRESETS.join(", ")})`);
    return { preset: named as Preset, url };
  }
  const host = url.hostname.toLowerCase();
  if (host === "hooks.slack.com") return { preset: "slack", url };
  if (host === "ntfy.sh") return { preset: "ntfy", url };
  if (host === "hc-ping.com") return { preset: "healthchecks", url };
  return { preset: "json", url };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, " "));
  } catch {
    return s;
  }
}

/** The origin only: webhook paths and queries often are the secret (Slack, ntfy topics, ping keys). */
function webhookTarget(raw: string): string {
  try {
    const { preset, url } = webhookPreset(raw);
    return `${url.origin}${url.pathname !== "/" || url.search ? "/…" : ""}${preset !== "json" ? ` (${preset})` : ""}`;
  } catch {
    try {
      return new URL(raw).origin;
    } catch {
      return "an invalid webhook URL";
    }
  }
}

async function sendWebhook(webhook: WebhookConfig, notice: AlertNotice, timeoutMs: number): Promise<void> {
  const { preset, url } = webhookPreset(webhook.url);
  const headers: Record<string, string> = { "User-Agent": USER_AGENT };
  if (webhook.tokenFile)
    headers.Authorization = `Bearer ${await readSecretFile(webhook.tokenFile, "webhook token")}`;
  let body: string;
  switch (preset) {
    case "json":
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(alertPayload(notice));
      break;
    case "slack":
      headers["Content-Type"] = "application/json";
      body = JSON.stringify({ text: slackText(notice) });
      break;
    case "ntfy":
      headers["Content-Type"] = "text/plain; charset=utf-8";
      headers.Title = headerValue(alertSubject(notice));
      headers.Priority =
        notice.state === "closed" ? "default" : notice.severity === "critical" ? "urgent" : "high";
      headers.Tags = [
        notice.state === "closed"
          ? "white_check_mark"
          : notice.severity === "critical"
            ? "rotating_light"
            : "warning",
        "sitekeep",
      ].join(",");
      body = alertBody(notice);
      break;
    case "healthchecks": {
      const suffix = notice.state === "closed" ? "" : notice.severity === "critical" ? "/fail" : "/log";
      url.pathname = url.pathname.replace(/\/+$/, "") + suffix;
      headers["Content-Type"] = "text/plain; charset=utf-8";
      body = `${alertSubject(notice)}\n\n${alertBody(notice)}`;
      break;
    }
  }
  let res: Response;
  let answer: string;
  try {
    const signal = AbortSignal.timeout(timeoutMs);
    res = await fetch(url, { method: "POST", headers, body, redirect: "manual", signal });
    answer = await res.text();
  } catch (err) {
    throw new Error(`POST ${url.origin}: ${fetchErrorMessage(err, timeoutMs)}`);
  }
  if (res.status >= 200 && res.status < 300) return;
  const detail = oneLine(answer).trim().slice(0, 200);
  const redirect =
    res.status >= 300 && res.status < 400 ? " (redirects are not followed: configure the final URL)" : "";
  const message = `POST ${url.origin}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}${redirect}${detail ? `: ${detail}` : ""}`;
  throw res.status >= 400 && res.status < 500 && ![408, 425, 429].includes(res.status)
    ? new PermanentError(message)
    : new Error(message);
}

function fetchErrorMessage(err: unknown, timeoutMs: number): string {
  if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError"))
    return `timed out after ${formatMs(timeoutMs)}`;
  const cause =
    err instanceof Error
      ? (err.cause as (Error & { code?: string; errors?: Error[] }) | undefined)
      : undefined;
  if (!cause) return errorMessage(err);
  const why = cause.message || cause.errors?.[0]?.message || cause.code || String(cause);
  return `${errorMessage(err)}: ${why}`;
}

/** An HTTP header value: printable ASCII as is, anything else as an RFC 2047 word (ntfy decodes it). */
function headerValue(s: string): string {
  const flat = oneLine(s);
  return /^[\x20-\x7e]*$/.test(flat) ? flat : `=?UTF-8?B?${Buffer.from(flat, "utf8").toString("base64")}?=`;
}

function slackText(n: AlertNotice): string {
  const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const icon =
    n.state === "closed"
      ? ":white_check_mark:"
      : n.severity === "critical"
        ? ":rotating_light:"
        : ":warning:";
  const facts = [
    `alert ${n.alertId}`,
    n.messageId !== undefined ? `message ${n.messageId}` : "",
    n.runId ? `run ${n.runId}` : "",
    n.time,
  ]
    .filter(Boolean)
    .join(" · ");
  return `${icon} *${esc(alertSubject(n))}*\n${esc(n.text)}\n_${esc(facts)}_`;
}

// ---- command -------------------------------------------------------------------------------------

/** The command's program only (the rest of the line may carry tokens). */
function commandTarget(command: string): string {
  const words = command.trim().split(/\s+/);
  return words.length > 1 ? `${words[0]} …` : words[0];
}

async function runAlertCommand(
  command: string,
  notice: AlertNotice,
  env: NodeJS.ProcessEnv | undefined,
  timeoutMs: number,
): Promise<void> {
  const r = await runCommand(command, {
    timeoutMs,
    input: JSON.stringify(alertPayload(notice)) + "\n",
    env: {
      ...(env ?? process.env),
      SITEKEEP_ALERT_ID: String(notice.alertId),
      SITEKEEP_ALERT_KIND: notice.kind,
      SITEKEEP_ALERT_SEVERITY: notice.severity,
      SITEKEEP_ALERT_STATE: notice.state,
      SITEKEEP_ALERT_SITE: notice.site,
      SITEKEEP_ALERT_MESSAGE_ID: notice.messageId !== undefined ? String(notice.messageId) : "",
      SITEKEEP_ALERT_RUN_ID: notice.runId ?? "",
      SITEKEEP_ALERT_TIME: notice.time,
    },
  });
  // Named by its program only, as in the target: the rest of the line may carry tokens.
  if (r.code !== 0 || r.timedOut) throw new Error(describeResult({ ...r, command: commandTarget(command) }));
}
