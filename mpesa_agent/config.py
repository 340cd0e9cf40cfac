"""Settings, read once from `.env`, `.env.local` and the process environment (which wins)."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent

BASE_URLS = {
    "simulator": "http://127.0.0.1:8002",
    "sandbox": "https://sandbox.safaricom.co.ke",
    "production": "https://api.safaricom.co.ke",
}
SANDBOX_SHORTCODE = "174379"
SANDBOX_PASSKEY = "bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919"
# Safaricom asks integrators to keep these out of callback URLs, in any case.
FORBIDDEN_URL_WORDS = ("m-pesa", "mpesa", "safaricom", "exe", "exec", "cmd", "sql", "query")
MIN_CALLBACK_TOKEN_LENGTH = 24
# Seconds between webhook attempts (about 3 days in all, then the endpoint is disabled); each gets +-20 % jitter.
AFRICASTALKING_URLS = {"sandbox": "https://api.sandbox.africastalking.com", "live": "https://api.africastalking.com"}
WEBHOOK_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000, 86400, 86400)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message says which and how to fix it."""


def read_environment(root: Path = PROJECT_ROOT, environ: Mapping[str, str] | None = None) -> dict:
    """Merge `.env` < `.env.local` < the process environment into one dict.

    `MPESA_ENV_FILES` (comma-separated, default `.env,.env.local`) names the files; tests set it
    to `.env` so that a developer's `.env.local` cannot change what they run.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, str] = {}
    for name in _list(environ.get("MPESA_ENV_FILES") or ".env,.env.local"):
        path = root / name
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    # An empty variable counts as unset: `adk web` copies .env (with its empty CALLBACK_API_KEY)
    # into the environment, which must not hide the key in .env.local.
    merged.update({k: v for k, v in environ.items() if v != ""})
    return merged


def _int(values: Mapping[str, str], name: str, default: int) -> int:
    raw = str(values.get(name, "") or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _float(values: Mapping[str, str], name: str, default: float) -> float:
    raw = str(values.get(name, "") or "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _positive(values: Mapping[str, str], name: str, default: float) -> float:
    value = _float(values, name, default)
    if not 0 < value < 10**6:
        raise ConfigError(f"{name} must be a number above 0, got {values.get(name)!r}")
    return value


def _bool(values: Mapping[str, str], name: str) -> bool:
    return str(values.get(name, "") or "").strip().lower() in ("1", "true", "yes", "on")


def _seconds_list(values: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = _list(values.get(name))
    if not raw:
        return default
    try:
        found = tuple(float(part) for part in raw)
    except ValueError:
        found = ()
    if not found or any(not 0 <= value < 10**7 for value in found):
        raise ConfigError(f"{name} must be seconds between attempts, comma-separated (e.g. 5,300,1800), got {values[name]!r}")
    return found


@dataclass(frozen=True)
class Settings:
    """Every setting of the three processes; see `.env` for what each one means."""

    mpesa_env: str = "simulator"
    consumer_key: str = ""
    consumer_secret: str = field(default="", repr=False)
    shortcode: str = SANDBOX_SHORTCODE
    passkey: str = field(default=SANDBOX_PASSKEY, repr=False)
    transaction_type: str = "CustomerPayBillOnline"
    party_b: str = ""
    base_url: str = BASE_URLS["simulator"]
    callback_url: str = field(default="", repr=False)
    callback_server_url: str = "http://127.0.0.1:8001"
    callback_api_key: str = field(default="", repr=False)
    dashboard_secret: str = field(default="", repr=False)  # empty: derived from callback_api_key (server/dashboard_auth.py)
    payments_db: Path | str = PROJECT_ROOT / "data" / "payments.db"  # a SQLite file, or a postgresql:// URL
    max_amount: int = 150_000
    confirm_above: int = 10_000  # a larger push needs the person's approval (ADK confirmation; confirm=true over MCP)
    rate_limit_count: int = 5
    rate_limit_window: int = 600
    repeat_window: int = 120  # seconds in which the same amount to the same phone needs confirming (Daraja rule 17)
    auto_retry: bool = False  # the callback server retries failures that asking again can fix (payments/retry.py)
    auto_retry_max: int = 2  # retries in one payment's chain, at most, before automatic retry stops
    auto_retry_delay: float = 120.0  # seconds after the failure (and after the last identical push)
    wait_seconds: int = 120
    reconcile_after: int = 300
    bulk_pushes_per_second: float = 2.0  # bulk requests' pace (Daraja's spike arrest is per app, unpublished)
    bulk_throttle_pause: float = 5.0  # first pause after Daraja throttles a bulk push; doubles up to 5 minutes
    verify_success_by_query: bool = False
    allow_live_money: bool = False  # production sends real prompts only with this switch on
    trusted_callback_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    agent_model: str = "gemini-2.5-flash"
    use_gemini: bool = False
    simulator_callback_delay: float = 2.0
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE
    webhook_timeout: float = 10.0
    webhooks_allow_private_urls: bool = False
    notify_events: tuple[str, ...] = ("payment.completed", "payment.failed")
    notify_language: str = "en"
    notify_email_to: tuple[str, ...] = ()
    notify_sms_to: tuple[str, ...] = ()  # phone numbers, or "customer" for the payer's receipt
    notify_whatsapp_to: tuple[str, ...] = ()
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = ""
    smtp_starttls: bool = True
    africastalking_username: str = "sandbox"
    africastalking_api_key: str = field(default="", repr=False)
    africastalking_sender_id: str = ""
    africastalking_base_url: str = AFRICASTALKING_URLS["sandbox"]
    whatsapp_token: str = field(default="", repr=False)
    whatsapp_phone_number_id: str = ""
    whatsapp_template: str = "payment_update"
    whatsapp_base_url: str = "https://graph.facebook.com/v20.0"
    root: Path = field(default=PROJECT_ROOT, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, root: Path = PROJECT_ROOT,
                 load_files: bool = True) -> "Settings":
        """Build settings from the environment (and the `.env` files when `load_files`)."""
        values = read_environment(root, environ) if load_files else dict(environ or {})
        env = (values.get("MPESA_ENV") or "simulator").strip().lower()
        if env not in BASE_URLS:
            raise ConfigError(f"MPESA_ENV must be one of {', '.join(BASE_URLS)}, got {env!r}")
        shortcode = (values.get("MPESA_SHORTCODE") or SANDBOX_SHORTCODE).strip()
        db_setting = (values.get("PAYMENTS_DB") or "data/payments.db").strip()
        db = db_setting if db_setting.startswith(("postgresql://", "postgres://")) else Path(db_setting)
        return cls(
            mpesa_env=env,
            consumer_key=(values.get("MPESA_CONSUMER_KEY") or "").strip(),
            consumer_secret=(values.get("MPESA_CONSUMER_SECRET") or "").strip(),
            shortcode=shortcode,
            passkey=(values.get("MPESA_PASSKEY") or SANDBOX_PASSKEY).strip(),
            transaction_type=(values.get("MPESA_TRANSACTION_TYPE") or "CustomerPayBillOnline").strip(),
            party_b=(values.get("MPESA_PARTY_B") or shortcode).strip(),
            base_url=(values.get("MPESA_BASE_URL") or BASE_URLS[env]).strip().rstrip("/"),
            callback_url=(values.get("MPESA_CALLBACK_URL") or "").strip(),
            callback_server_url=(values.get("CALLBACK_SERVER_URL") or "http://127.0.0.1:8001").strip().rstrip("/"),
            callback_api_key=(values.get("CALLBACK_API_KEY") or "").strip(),
            dashboard_secret=(values.get("DASHBOARD_SECRET") or "").strip(),
            payments_db=db if isinstance(db, str) or db.is_absolute() else root / db,
            max_amount=_int(values, "PAYMENT_MAX_AMOUNT", 150_000),
            confirm_above=_int(values, "PAYMENT_CONFIRM_ABOVE", 10_000),
            rate_limit_count=_int(values, "PAYMENT_RATE_LIMIT_COUNT", 5),
            rate_limit_window=_int(values, "PAYMENT_RATE_LIMIT_WINDOW", 600),
            repeat_window=_int(values, "PAYMENT_REPEAT_WINDOW", 120),
            auto_retry=_bool(values, "PAYMENT_AUTO_RETRY"),
            auto_retry_max=_int(values, "PAYMENT_AUTO_RETRY_MAX", 2),
            auto_retry_delay=_float(values, "PAYMENT_AUTO_RETRY_DELAY", 120.0),
            wait_seconds=_int(values, "PAYMENT_WAIT_SECONDS", 120),
            reconcile_after=_int(values, "RECONCILE_AFTER_SECONDS", 300),
            bulk_pushes_per_second=_positive(values, "BULK_PUSHES_PER_SECOND", 2.0),
            bulk_throttle_pause=_positive(values, "BULK_THROTTLE_PAUSE_SECONDS", 5.0),
            verify_success_by_query=_bool(values, "VERIFY_SUCCESS_BY_QUERY"),
            allow_live_money=_bool(values, "MPESA_ALLOW_LIVE_MONEY"),
            trusted_callback_ips=_list(values.get("TRUSTED_CALLBACK_IPS")),
            trusted_proxies=_list(values.get("TRUSTED_PROXIES")),
            agent_model=(values.get("MPESA_AGENT_MODEL") or "gemini-2.5-flash").strip(),
            use_gemini=bool((values.get("GOOGLE_API_KEY") or values.get("GEMINI_API_KEY") or "").strip()
                            or (values.get("GOOGLE_GENAI_USE_VERTEXAI") or values.get("GOOGLE_GENAI_USE_ENTERPRISE") or "").strip().lower() in ("1", "true")),
            simulator_callback_delay=_float(values, "SIMULATOR_CALLBACK_DELAY", 2.0),
            webhook_retry_schedule=_seconds_list(values, "WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE),
            webhook_timeout=_float(values, "WEBHOOK_TIMEOUT_SECONDS", 10.0),
            webhooks_allow_private_urls=_bool(values, "WEBHOOKS_ALLOW_PRIVATE_URLS"),
            notify_events=_list(values.get("NOTIFY_EVENTS") or "payment.completed,payment.failed"),
            notify_language=(values.get("NOTIFY_LANGUAGE") or "en").strip().lower(),
            notify_email_to=_list(values.get("NOTIFY_EMAIL_TO")),
            notify_sms_to=_list(values.get("NOTIFY_SMS_TO")),
            notify_whatsapp_to=_list(values.get("NOTIFY_WHATSAPP_TO")),
            smtp_host=(values.get("SMTP_HOST") or "").strip(),
            smtp_port=_int(values, "SMTP_PORT", 587),
            smtp_user=(values.get("SMTP_USER") or "").strip(),
            smtp_password=values.get("SMTP_PASSWORD") or "",
            smtp_from=(values.get("SMTP_FROM") or values.get("SMTP_USER") or "").strip(),
            smtp_starttls=_bool({"v": values.get("SMTP_STARTTLS") or "true"}, "v"),
            africastalking_username=(values.get("AFRICASTALKING_USERNAME") or "sandbox").strip(),
            africastalking_api_key=(values.get("AFRICASTALKING_API_KEY") or "").strip(),
            africastalking_sender_id=(values.get("AFRICASTALKING_SENDER_ID") or "").strip(),
            africastalking_base_url=(values.get("AFRICASTALKING_BASE_URL") or AFRICASTALKING_URLS[
                "sandbox" if (values.get("AFRICASTALKING_USERNAME") or "sandbox").strip() == "sandbox" else "live"]
            ).strip().rstrip("/"),
            whatsapp_token=(values.get("WHATSAPP_TOKEN") or "").strip(),
            whatsapp_phone_number_id=(values.get("WHATSAPP_PHONE_NUMBER_ID") or "").strip(),
            whatsapp_template=(values.get("WHATSAPP_TEMPLATE") or "payment_update").strip(),
            whatsapp_base_url=(values.get("WHATSAPP_BASE_URL") or "https://graph.facebook.com/v20.0").strip().rstrip("/"),
            root=root,
        )

    def replace(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def callback_path(self) -> str:
        """The path part of MPESA_CALLBACK_URL: where the callback server listens for Daraja."""
        return urlsplit(self.callback_url).path or "/"

    @property
    def callback_token(self) -> str:
        """The secret last segment of the callback path."""
        return self.callback_path.rstrip("/").rsplit("/", 1)[-1]


def mode(settings: "Settings") -> str:
    """Which money this configuration moves, said plainly (printed at start)."""
    if settings.mpesa_env == "simulator":
        return "simulator: offline, no money moves"
    if settings.mpesa_env == "sandbox":
        return "sandbox: Safaricom's test system, no real money"
    if settings.allow_live_money:
        return "production: LIVE MONEY (MPESA_ALLOW_LIVE_MONEY=true): real payment prompts reach real phones"
    return "production, live money switched off (MPESA_ALLOW_LIVE_MONEY is not true): nothing is sent"


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


def callback_url_problems(settings: Settings) -> list[str]:
    """Everything wrong with MPESA_CALLBACK_URL for the chosen environment, in plain words."""
    url = settings.callback_url
    if not url:
        return ["MPESA_CALLBACK_URL is not set"]
    if url != url.strip() or " " in url:
        return ["MPESA_CALLBACK_URL contains spaces"]
    parts = urlsplit(url)
    problems = []
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"MPESA_CALLBACK_URL must be an absolute http(s) URL, got {url!r}"]
    if settings.mpesa_env == "production" and parts.scheme != "https":
        problems.append("MPESA_CALLBACK_URL must use https in production")
    if parts.netloc != parts.netloc.lower():
        problems.append("MPESA_CALLBACK_URL's host must be lowercase")
    lowered = url.lower()
    bad = [w for w in FORBIDDEN_URL_WORDS if w in lowered]
    if bad:
        problems.append("MPESA_CALLBACK_URL contains words Safaricom blocks: " + ", ".join(bad))
    if settings.mpesa_env != "simulator":
        if parts.hostname in ("127.0.0.1", "localhost", "0.0.0.0") or parts.hostname.startswith("192.168."):
            problems.append("MPESA_CALLBACK_URL must be publicly reachable, not " + parts.hostname)
    if len(settings.callback_token) < MIN_CALLBACK_TOKEN_LENGTH:
        problems.append(
            f"MPESA_CALLBACK_URL must end in a secret token of at least {MIN_CALLBACK_TOKEN_LENGTH} "
            "characters, e.g. /callback/" + secrets.token_hex(16)
        )
    return problems
