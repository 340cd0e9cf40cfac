"""Money safety as a property: over generated chats the offline model never sends a phone or an amount
the person did not state (or confirm), and asks when a message is ambiguous.

Chats are built from every phone form and amount form the model reads, in English, Swahili and Sheng,
with noise words, foreign and landline numbers, cancellations and corrections. Each chat runs through
ADK's real runner (tests/test_offline_model.py's fake tools answer every send with a success).
"""
import os

import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpesa_agent.payments.phones import InvalidPhoneNumber, normalize_phone
from tests.test_offline_model import SEND, converse

EN_UNITS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SW_UNITS = ["", "moja", "mbili", "tatu", "nne", "tano", "sita", "saba", "nane", "tisa"]
SW_TENS = ["", "kumi", "ishirini", "thelathini", "arobaini", "hamsini", "sitini", "sabini", "themanini", "tisini"]

SEND_WORDS = ["send", "tuma", "lipa", "request", "nitumie", "charge", "please send", "naomba utume"]
NOISE = ["", "please", "tafadhali", "bana", "sasa", "haraka", "asante", "boss", "msee", "buda", "now"]
TO = ["to", "kwa", "for number", "namba", ""]
CANCELS = ["achana nayo", "cancel", "forget it", "usitume", "hapana, cancel that", "never mind"]
OFF_TOPIC = ["niambie joke moja", "tell me a joke", "nipe hadithi mbili", "what is 5 times 3", "habari yako"]


def english(n: int) -> str:
    if n >= 1000:
        rest = n % 1000
        return f"{english(n // 1000)} thousand" + (f" {english(rest)}" if rest else "")
    if n >= 100:
        rest = n % 100
        return f"{EN_UNITS[n // 100]} hundred" + (f" and {english(rest)}" if rest else "")
    if n < 20:
        return EN_UNITS[n]
    return EN_TENS[n // 10] + (f" {EN_UNITS[n % 10]}" if n % 10 else "")


def swahili(n: int) -> str:
    parts = []
    if n >= 1000:
        parts.append(f"elfu {swahili(n // 1000)}")
        n %= 1000
    if n >= 100:
        parts.append(f"mia {SW_UNITS[n // 100]}")
        n %= 100
    if n >= 10:
        parts.append(SW_TENS[n // 10] + (f" na {SW_UNITS[n % 10]}" if n % 10 else ""))
    elif n:
        parts.append(SW_UNITS[n])
    return " na ".join(parts)


@st.composite
def amounts(draw) -> tuple[int, str]:
    """(value, as written): digits, currency marks, k, thao, English and Swahili words."""
    value = draw(st.one_of(st.integers(10, 999), st.integers(1, 150).map(lambda k: k * 1000),
                           st.integers(11, 150_000)))
    forms = [str(value), f"{value:,}", f"ksh {value}", f"KES {value:,}", f"{value} bob", f"{value}/-",
             f"sh {value}", f"{value} shillings", english(value)]
    if value < 1_000_000:
        forms.append(swahili(value))
    if value % 1000 == 0:
        forms += [f"{value // 1000}k", f"{value // 1000} thao", f"thao {value // 1000}", f"{value // 1000} thousand"]
    if value % 100 == 0 and value % 1000:
        forms.append(f"{value / 1000}k")
    return value, draw(st.sampled_from(forms))


def kenyan_mobiles():
    prefix = st.sampled_from(["070", "071", "072", "074", "075", "076", "079", "011", "010"])
    return st.tuples(prefix, st.integers(0, 9_999_999)).map(lambda t: f"{t[0]}{t[1]:07d}").filter(_is_mobile)


def _is_mobile(local: str) -> bool:
    try:
        normalize_phone(local)
    except InvalidPhoneNumber:
        return False
    return True


@st.composite
def phones(draw) -> tuple[str, str]:
    """(07.. as the agent must send it, as written): every usual form of a Kenyan mobile."""
    local = draw(kenyan_mobiles())
    n = local[1:]
    forms = [local, f"{local[:4]} {local[4:7]} {local[7:]}", f"{local[:4]}-{local[4:7]}-{local[7:]}",
             f"+254{n}", f"+254 {n[:3]} {n[3:6]} {n[6:]}", f"254{n}", f"{local[:3]} {local[3:6]} {local[6:]}",
             f"{local[:4]} {local[4:6]} {local[6:8]} {local[8:]}", f"({local[:4]}) {local[4:]}",
             f"{local[:4]}.{local[4:7]}.{local[7:]}"]
    return local, draw(st.sampled_from(forms))


@st.composite
def not_kenyan_mobiles(draw) -> str:
    """Numbers that must never become a Kenyan mobile: foreign (with its Kenyan-looking tail), landlines."""
    tail = draw(kenyan_mobiles())[1:]
    return draw(st.sampled_from([
        f"+255 {tail[:3]} {tail[3:6]} {tail[6:]}", f"+256{tail}", f"+255{tail}", f"255{tail}",
        "+44 7911 123456", "07911 123456", "020 2222 333", "+254 20 2222333",
    ]))


@st.composite
def requests(draw) -> tuple[str, int, str]:
    """A complete request in one message: (text, amount, phone)."""
    amount, amount_text = draw(amounts())
    phone, phone_text = draw(phones())
    send, to, noise = draw(st.sampled_from(SEND_WORDS)), draw(st.sampled_from(TO)), draw(st.sampled_from(NOISE))
    order = draw(st.integers(0, 2))
    text = [f"{send} {amount_text} {to} {phone_text} {noise}",
            f"{send} {to} {phone_text} {amount_text} {noise}",
            f"{noise} {send} {amount_text} {to} {phone_text}"][order]
    return " ".join(text.split()), amount, phone


@st.composite
def turns(draw) -> list[tuple[str, dict]]:
    """A chat: messages, each with what it states ({"phones": .., "amounts": .., "cancel": .., "ambiguous": ..})."""
    chat = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["request", "amount", "phone", "foreign", "cancel", "off_topic", "two_amounts",
                                     "correction"]))
        if kind == "request":
            text, amount, phone = draw(requests())
            chat.append((text, {"phones": {phone}, "amounts": {amount}}))
        elif kind == "amount":
            amount, written = draw(amounts())
            chat.append((f"{draw(st.sampled_from(['', 'for', 'tuma', 'ni']))} {written}".strip(), {"amounts": {amount}}))
        elif kind == "phone":
            phone, written = draw(phones())
            chat.append((f"{draw(st.sampled_from(['', 'to', 'kwa', 'from', 'namba ni']))} {written}".strip(),
                         {"phones": {phone}}))
        elif kind == "foreign":
            amount, written = draw(amounts())
            chat.append((f"send {written} to {draw(not_kenyan_mobiles())}", {"amounts": {amount}}))
        elif kind == "cancel":
            chat.append((draw(st.sampled_from(CANCELS)), {"cancel": True}))
        elif kind == "off_topic":
            chat.append((draw(st.sampled_from(OFF_TOPIC)), {}))
        elif kind == "two_amounts":
            (a, a_text), (b, b_text) = draw(amounts()), draw(amounts())
            phone, written = draw(phones())
            chat.append((f"send {a_text} or {b_text} to {written}",
                         {"phones": {phone}, "amounts": {a, b}, "ambiguous": a != b}))
        else:
            amount, written = draw(amounts())
            chat.append((f"{draw(st.sampled_from(['no wait make it', 'samahani ni', 'sorry, I meant', 'actually']))} "
                         f"{written}", {"amounts": {amount}, "confirm_needed": True}))
    return chat


def local(phone: str) -> str:
    number = phonenumbers.parse(phone, "KE")
    assert number.country_code == 254, phone
    return "0" + str(number.national_number)


@settings(max_examples=int(os.environ.get("MONEY_PROPERTY_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns())
def test_the_agent_sends_only_what_the_person_stated(chat):
    results = converse(*(text for text, _ in chat))
    phones, amounts = set(), set()  # stated since the last cancellation
    sent_last_turn = False
    for (text, stated), turn in zip(chat, results):
        if stated.get("cancel"):
            phones, amounts = set(), set()
        phones |= stated.get("phones", set())
        amounts |= stated.get("amounts", set())
        sends = [args for name, args in turn.calls if name == SEND]
        assert len(sends) <= 1, text
        if stated.get("ambiguous") or stated.get("cancel"):
            assert not sends, f"{text!r} sent {sends}"
        if stated.get("confirm_needed") and sent_last_turn:
            assert not sends, f"{text!r} re-sent without asking: {sends}"  # a prompt already went out
        for args in sends:
            assert local(args["phone_number"]) in phones, f"{text!r}: phone {args['phone_number']} never stated"
            assert args["amount"] in amounts, f"{text!r}: amount {args['amount']} never stated"
        sent_last_turn = bool(sends)
