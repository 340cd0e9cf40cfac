"""`mpesa`: the developer CLI, in the spirit of the Stripe CLI. It talks to the callback server over
HTTP with the Bearer key (and, for `trigger`, to the Daraja simulator), never to its database.

    mpesa listen --forward-to http://127.0.0.1:5000/hooks      # live events, each forwarded signed
    mpesa trigger payment.failed --reason 1032                 # a real payment through the simulator
    mpesa payments list | show ID | export      mpesa events list      mpesa webhooks add URL | list | replay ID
    mpesa bulk send chama.csv --watch 600      # many prompts at once, with progress until all settle

Tables on a terminal, plain text in a pipe, `--json` for scripts. Run it as `mpesa` (installed by
scripts/venv.sh from pyproject.toml) or `python -m mpesa_agent.cli`.
"""
from __future__ import annotations

import base64
import csv
import json
import secrets
import sys
import time
from typing import Iterator

import click
import requests
from rich import box
from rich.console import Console
from rich.table import Table

from mpesa_agent.config import ConfigError, Settings
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.daraja.errors import DarajaError
from mpesa_agent.payments.bulk import InvalidBatch, rows_from_csv, validate
from mpesa_agent.payments.webhooks import message, signed_headers

TIMEOUT = (3.0, 30.0)  # connect, read
RECONNECT_SECONDS = 1.0
PROGRESS_SECONDS = 1.0  # how often `bulk send --watch` and `bulk status --watch` look at the batch
# The simulator's test numbers (README, "Simulator test numbers"): each ends the payment one way.
TRIGGER_PHONES = {"payment.completed": "0700000000"}
FAILURE_PHONES = {"1032": "0700001032", "1037": "0700001037", "2001": "0700002001", "1": "0700000001"}


class Failure(click.ClickException):
    """One clear line on stderr, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"mpesa: {self.message}", err=True)


class Api:
    """The callback server's API with the Bearer key; every failure is one `Failure` line."""

    def __init__(self, base_url: str, api_key: str):
        self.base_url, self.api_key = base_url.rstrip("/"), api_key
        self.session = requests.Session()

    def call(self, method: str, path: str, stream: bool = False, headers: dict | None = None, **kwargs):
        try:
            response = self.session.request(method, self.base_url + path, timeout=TIMEOUT, stream=stream,
                                            headers={"Authorization": f"Bearer {self.api_key}", **(headers or {})},
                                            **kwargs)
        except requests.RequestException:
            raise Failure(f"cannot reach the callback server at {self.base_url} (is it running? "
                          "python callback_server.py)") from None
        if response.status_code == 401:
            raise Failure(f"the callback server at {self.base_url} refused the API key: use its CALLBACK_API_KEY "
                          "(.env.local, or --api-key)")
        if stream and response.ok:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not response.ok:
            problems = "".join(f"\n  line {p.get('line')}: {p.get('reason')}" for p in body.get("problems") or ()
                               if isinstance(p, dict))
            raise Failure(f"{method} {path}: HTTP {response.status_code}: {body.get('error') or response.reason}"
                          f"{problems}")
        return body


class Context:
    def __init__(self, settings: Settings, api: Api, as_json: bool):
        self.settings, self.api, self.as_json = settings, api, as_json
        self.console = Console()

    def show(self, data, rows: list[dict], columns: tuple[str, ...], title: str | None = None) -> None:
        """`data` as JSON (--json), else `rows` as a table: boxed and coloured only on a terminal."""
        if self.as_json:
            click.echo(json.dumps(data, ensure_ascii=False, indent=2))
            return
        terminal = self.console.is_terminal
        table = Table(title=title if terminal else None, box=box.HEAVY_HEAD if terminal else None,
                      header_style="bold" if terminal else None, show_edge=terminal)
        for column in columns:
            table.add_column(column, overflow="fold")  # ids wrap rather than lose their end
        for row in rows:
            table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
        self.console.print(table, soft_wrap=not terminal)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="CALLBACK_SERVER_URL", help="The callback server (default CALLBACK_SERVER_URL).")
@click.option("--api-key", envvar="CALLBACK_API_KEY", help="Its Bearer key (default CALLBACK_API_KEY, .env.local).")
@click.option("--json", "as_json", is_flag=True, help="JSON output, for scripts.")
@click.pass_context
def cli(ctx: click.Context, server: str | None, api_key: str | None, as_json: bool) -> None:
    """Developer tools for the M-Pesa callback server: live events, test payments, webhooks."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    ctx.obj = Context(settings, Api(server or settings.callback_server_url, api_key or settings.callback_api_key),
                      as_json)


# --- listen -------------------------------------------------------------------------------------

def stream(api: Api, after: int) -> Iterator[tuple[int, str, str]]:
    """(id, type, data JSON) of every event after `after`, for ever, reconnecting with Last-Event-ID."""
    while True:
        try:
            response = api.call("GET", "/events/stream", stream=True, headers={"Last-Event-ID": str(after)})
            fields: dict[str, str] = {}
            for line in response.iter_lines(decode_unicode=True):
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                elif "data" in fields and "id" in fields:
                    after = int(fields["id"])
                    yield after, fields.get("event", ""), fields["data"]
                    fields = {}
                else:
                    fields = {}
        except (Failure, requests.RequestException) as exc:
            click.echo(f"mpesa: stream interrupted ({exc}); reconnecting after event {after}", err=True)
        time.sleep(RECONNECT_SECONDS)


@cli.command()
@click.option("--forward-to", metavar="URL", help="POST each event there, signed per Standard Webhooks.")
@click.option("--events", "types", metavar="TYPES", help="Comma-separated event types (default: all).")
@click.option("--secret", help="whsec_ secret to sign with (default: a new one, printed).")
@click.option("--after", type=int, help="Start after this event id (default: only new events).")
@click.pass_obj
def listen(ctx: Context, forward_to: str | None, types: str | None, secret: str | None, after: int | None) -> None:
    """Stream events live from /events/stream; with --forward-to, deliver each to a local URL."""
    wanted = {t.strip() for t in (types or "").split(",") if t.strip()}
    secret = secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if after is None:
        after = ctx.api.call("GET", "/events", params={"limit": 1})["last_id"]
    forward = requests.Session()
    click.echo(f"Ready! Listening for {', '.join(sorted(wanted)) or 'all events'} after event {after}"
               + (f", forwarding to {forward_to} (signing secret {secret})" if forward_to else ""), err=True)
    for event_id, kind, data in stream(ctx.api, after):
        if wanted and kind not in wanted:
            continue
        outcome = ""
        if forward_to:
            event = json.loads(data)
            body = message(kind, event["created_at"], data)
            try:
                answer = forward.post(forward_to, data=body.encode(), timeout=TIMEOUT,
                                      headers=signed_headers(str(event_id), body, (secret,), time.time()))
                outcome = f"[{answer.status_code}] POST {forward_to}"
            except requests.RequestException as exc:
                outcome = f"[failed] POST {forward_to}: {type(exc).__name__}"
        if ctx.as_json:
            click.echo(data)
        else:
            checkout = json.loads(data).get("checkout_request_id") or "-"
            click.echo(f"{event_id:>8}  {kind:<20} {checkout}  {outcome}".rstrip())


# --- trigger ------------------------------------------------------------------------------------

@cli.command()
@click.argument("event", type=click.Choice(["payment.completed", "payment.failed"]))
@click.option("--reason", type=click.Choice(sorted(FAILURE_PHONES)), default="1032", show_default=True,
              help="For payment.failed: 1032 cancelled, 1037 no response, 2001 wrong PIN, 1 insufficient balance.")
@click.option("--amount", type=click.IntRange(1, 150_000), default=1, show_default=True)
@click.option("--wait", type=float, default=30.0, show_default=True, help="Seconds to wait for the outcome.")
@click.pass_obj
def trigger(ctx: Context, event: str, reason: str, amount: int, wait: float) -> None:
    """Make a real payment through the Daraja simulator that ends with EVENT."""
    settings = ctx.settings
    if settings.mpesa_env != "simulator":
        raise Failure(f"trigger only runs against the simulator (MPESA_ENV is {settings.mpesa_env}): "
                      "it would prompt a real phone")
    phone = TRIGGER_PHONES.get(event) or FAILURE_PHONES[reason]
    try:
        ack = DarajaClient.from_settings(settings).stk_push(phone, amount, "trigger", "mpesa trigger",
                                                            settings.callback_url)
    except DarajaError as exc:
        raise Failure(f"the simulator at {settings.base_url} refused the push: {exc}") from None
    ctx.api.call("POST", "/payment/register", json={
        "checkout_request_id": ack.checkout_request_id, "merchant_request_id": ack.merchant_request_id,
        "phone_number": phone, "amount": amount, "description": f"mpesa trigger {event}"})
    answer = ctx.api.call("GET", f"/payment/wait/{ack.checkout_request_id}", params={"timeout": wait})
    ctx.show(answer, [answer], ("checkout_request_id", "payment_status", "message"))
    if answer["payment_status"] != event.split(".")[1]:
        raise Failure(f"{ack.checkout_request_id} is {answer['payment_status']}, not {event.split('.')[1]}")


@cli.command()
@click.argument("checkout_request_id")
@click.option("--yes", is_flag=True, help="Do not ask: the person already confirmed a new prompt.")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for the retry's outcome (0: report it as sent).")
@click.pass_obj
def retry(ctx: Context, checkout_request_id: str, yes: bool, wait: float) -> None:
    """Retry a failed payment: a new STK Push for the same phone and amount, linked to it."""
    found = ctx.api.call("GET", f"/payment/status/{checkout_request_id}")["payment"]
    question = (f"Send a new M-Pesa prompt to {found['phone_number']} for {found['amount']} KSh "
                f"({checkout_request_id} is {found['status']})?")
    if not yes:
        if not sys.stdin.isatty():
            raise Failure(f"{question} Add --yes to confirm (no terminal to ask on)")
        click.confirm(question, abort=True, err=True)
    answer = ctx.api.call("POST", f"/payment/{checkout_request_id}/retry", json={"confirm_repeat": True})
    if wait > 0:
        outcome = ctx.api.call("GET", f"/payment/wait/{answer['checkout_request_id']}", params={"timeout": wait})
        answer = {**answer, "payment_status": outcome["payment_status"], "message": outcome["message"],
                  "payment": outcome["payment"]}
    ctx.show(answer, [answer], ("checkout_request_id", "retry_of", "attempt", "payment_status", "message"))


# --- payments, events, webhooks -----------------------------------------------------------------

@cli.group()
def payments() -> None:
    """Payments the callback server tracks."""


@payments.command("list")
@click.option("--status", type=click.Choice(["pending", "completed", "failed", "unknown"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_obj
def payments_list(ctx: Context, status: str | None, limit: int) -> None:
    """The newest payments."""
    found = ctx.api.call("GET", "/payments", params={"status": status, "limit": limit})
    ctx.show(found, found["payments"], ("checkout_request_id", "status", "amount", "phone_number", "receipt",
                                        "created_at"), "Payments")


@payments.command("export")
@click.option("--status", type=click.Choice(["pending", "completed", "failed", "unknown"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, show_default=True)
@click.pass_obj
def payments_export(ctx: Context, status: str | None, limit: int) -> None:
    """The newest payments as CSV (every field of the record), for a spreadsheet."""
    found = ctx.api.call("GET", "/payments", params={"status": status, "limit": limit})["payments"]
    if found:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(found[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(found)


@payments.command("show")
@click.argument("checkout_request_id")
@click.pass_obj
def payments_show(ctx: Context, checkout_request_id: str) -> None:
    """One payment and its timeline."""
    status = ctx.api.call("GET", f"/payment/status/{checkout_request_id}")
    timeline = ctx.api.call("GET", f"/payment/{checkout_request_id}/events")["events"]
    if ctx.as_json:
        ctx.show({**status, "events": timeline}, [], ())
        return
    ctx.show(status, [{"field": k, "value": v} for k, v in status["payment"].items() if v is not None],
             ("field", "value"), status["message"])
    ctx.show(timeline, timeline, ("id", "type", "created_at"), "Timeline")


@cli.group()
def events() -> None:
    """The event log."""


@events.command("list")
@click.option("--type", "type_", help="Only this event type.")
@click.option("--after", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_obj
def events_list(ctx: Context, type_: str | None, after: int, limit: int) -> None:
    """Events after an id, oldest first."""
    page = ctx.api.call("GET", "/events", params={"type": type_, "after": after, "limit": limit})
    ctx.show(page, page["events"], ("id", "type", "checkout_request_id", "created_at"), "Events")


@cli.group()
def webhooks() -> None:
    """Webhook endpoints."""


@webhooks.command("add")
@click.argument("url")
@click.option("--events", "types", default="*", show_default=True, help="Comma-separated event types.")
@click.option("--description", default="")
@click.pass_obj
def webhooks_add(ctx: Context, url: str, types: str, description: str) -> None:
    """Add an endpoint; its secret is shown once."""
    endpoint = ctx.api.call("POST", "/webhooks", json={
        "url": url, "events": [t.strip() for t in types.split(",") if t.strip()], "description": description})
    ctx.show(endpoint, [endpoint], ("id", "url", "secret"), "Added: keep the secret, it is shown only now")


@webhooks.command("list")
@click.pass_obj
def webhooks_list(ctx: Context) -> None:
    """Every endpoint."""
    found = ctx.api.call("GET", "/webhooks")
    rows = [{**e, "events": ",".join(e["events"])} for e in found["webhooks"]]
    ctx.show(found, rows, ("id", "url", "events", "enabled", "note"), "Webhook endpoints")


@webhooks.command("replay")
@click.argument("endpoint_id")
@click.option("--event-id", type=int, help="One event.")
@click.option("--since", help="Every subscribed event from this ISO 8601 time ...")
@click.option("--until", help="... to this one (default: now).")
@click.pass_obj
def webhooks_replay(ctx: Context, endpoint_id: str, event_id: int | None, since: str | None, until: str | None) -> None:
    """Send events to an endpoint again."""
    if (event_id is None) == (since is None):
        raise Failure("give --event-id or --since (with an optional --until)")
    body = {"event_id": event_id} if event_id is not None else {"since": since, **({"until": until} if until else {})}
    answer = ctx.api.call("POST", f"/webhooks/{endpoint_id}/replay", json=body)
    ctx.show(answer, [answer], ("endpoint_id", "queued"))


# --- bulk ----------------------------------------------------------------------------------------

@cli.group()
def bulk() -> None:
    """Ask many people to pay at once, from a CSV (phone,amount[,reference]; header optional)."""


@bulk.command("send")
@click.argument("csv_file", type=click.File("rb"))
@click.option("--description", default="", help="What the batch is for (shown with each item's reference).")
@click.option("--skip-invalid", is_flag=True, help="Send the valid rows even if some are bad (default: none).")
@click.option("--yes", is_flag=True, help="Do not ask: the person already confirmed these prompts.")
@click.option("--watch", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Show progress until every item settles, for at most this long (0: report it as queued).")
@click.pass_obj
def bulk_send(ctx: Context, csv_file, description: str, skip_invalid: bool, yes: bool, watch: float) -> None:
    """Send an M-Pesa prompt to every row of CSV_FILE ('-' reads standard input)."""
    raw = csv_file.read()
    try:
        text = raw.decode("utf-8-sig")
        valid, problems = validate(rows_from_csv(text), ctx.settings.max_amount)
    except UnicodeDecodeError:
        raise Failure(f"{csv_file.name} is not UTF-8 text; save it as CSV (UTF-8)") from None
    except InvalidBatch as exc:
        raise Failure(f"{csv_file.name}: {exc}") from None
    if problems and not skip_invalid:
        lines = "".join(f"\n  line {p.line}: {p.reason}" for p in problems)
        raise Failure(f"{len(problems)} problem(s) in {csv_file.name}, so nothing was sent (fix them, or add "
                      f"--skip-invalid to send only the valid rows):{lines}")
    if not valid:
        raise Failure(f"no valid rows in {csv_file.name}; nothing was sent")
    question = (f"Send M-Pesa prompts to {len(valid)} phone{'s' if len(valid) > 1 else ''} for "
                f"{sum(row.amount for row in valid):,} KSh in all"
                f"{f' ({len(problems)} bad row(s) skipped)' if problems else ''}?")
    if not yes:
        if not sys.stdin.isatty() or csv_file.name == "<stdin>":
            raise Failure(f"{question} Add --yes to confirm (no terminal to ask on)")
        click.confirm(question, abort=True, err=True)
    answer = ctx.api.call("POST", "/payment/bulk", data=text.encode(), headers={"Content-Type": "text/csv"},
                          params={"description": description, "skip_invalid": "true" if skip_invalid else "false"})
    batch = answer["batch"]
    click.echo(f"Batch {batch['id']}: {batch['item_count']} prompts queued, {batch['total_amount']:,} KSh in all.",
               err=True)
    _show_batch(ctx, _watch(ctx, batch, watch) if watch > 0 else batch)


@bulk.command("status")
@click.argument("batch_id")
@click.option("--watch", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Show progress until every item settles, for at most this long.")
@click.pass_obj
def bulk_status(ctx: Context, batch_id: str, watch: float) -> None:
    """A batch's progress: counts and KSh by outcome, who has not paid, who failed and why."""
    batch = ctx.api.call("GET", f"/payment/bulk/{batch_id}")
    _show_batch(ctx, _watch(ctx, batch, watch) if watch > 0 else batch)


@bulk.command("cancel")
@click.argument("batch_id")
@click.pass_obj
def bulk_cancel(ctx: Context, batch_id: str) -> None:
    """Stop the prompts of a batch not sent yet (one being sent still goes out)."""
    answer = ctx.api.call("POST", f"/payment/bulk/{batch_id}/cancel")
    click.echo(f"Batch {batch_id}: {answer['cancelled']} prompt(s) not sent.", err=True)
    _show_batch(ctx, answer["batch"])


@bulk.command("export")
@click.argument("batch_id")
@click.pass_obj
def bulk_export(ctx: Context, batch_id: str) -> None:
    """Every item of a batch with its outcome, as CSV."""
    response = ctx.api.call("GET", f"/payment/bulk/{batch_id}.csv", stream=True)
    click.echo(response.text, nl=False)


def _watch(ctx: Context, batch: dict, seconds: float) -> dict:
    """Poll the batch until it settles or `seconds` pass, with one progress line on stderr per change."""
    deadline, shown = time.monotonic() + seconds, None
    while True:
        line = _progress(batch)
        if line != shown:
            click.echo(line, err=True)
            shown = line
        if batch["settled"] or time.monotonic() >= deadline:
            if not batch["settled"]:
                click.echo(f"Still open after {seconds:g} s: mpesa bulk status {batch['id']} --watch 600 "
                           "follows it again.", err=True)
            return batch
        time.sleep(min(PROGRESS_SECONDS, max(0.0, deadline - time.monotonic())))
        batch = ctx.api.call("GET", f"/payment/bulk/{batch['id']}")


def _progress(batch: dict) -> str:
    counts = batch["by_outcome"]
    waiting = sum(counts.get(state, {}).get("count", 0) for state in ("queued", "sending"))
    sent = batch["item_count"] - waiting - counts.get("cancelled", {}).get("count", 0)
    return (f"{sent}/{batch['item_count']} sent; {batch['summary']}; "
            f"{batch['paid_amount']:,} of {batch['total_amount']:,} KSh paid")


def _show_batch(ctx: Context, batch: dict) -> None:
    rows = [{"outcome": outcome, "count": tally["count"], "KSh": f"{tally['amount']:,}"}
            for outcome, tally in batch["by_outcome"].items() if tally["count"]]
    ctx.show(batch, rows, ("outcome", "count", "KSh"), f"Batch {batch['id']}: {batch['summary']}")
    if not ctx.as_json and batch.get("failed"):
        failed = [{**item, "reason": item.get("reason") or item.get("outcome")} for item in batch["failed"]]
        ctx.show(batch["failed"], failed, ("line", "phone_number", "amount", "outcome", "reason"), "Failed or unknown")


def main() -> None:
    cli(prog_name="mpesa")


if __name__ == "__main__":
    sys.exit(main())
