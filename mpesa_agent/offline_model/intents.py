"""What one chat message asks for: intent, phone, amount, purpose, checkout ID. Pure text, no ADK.

English and everyday Kenyan phrasing: "tuma 500 kwa 0712 345 678 ya lunch", "nitumie 1.5k",
"Ksh. 1,200", "500 bob", "mia tano", "elfu moja mia tano", "2 thao".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, display_phone, normalize_phone, parse_amount

SEND, STATUS, HELP, YES, NO, RETRY, OTHER = "send", "status", "help", "yes", "no", "retry", "other"

CHECKOUT_ID = re.compile(r"\bws_CO_\w+", re.IGNORECASE)

_SEP = r"[\s.\-]?"
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    rf"\+?254{_SEP}\(?0?\)?{_SEP}\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{3}}"  # +254 712 345 678, 254712345678
    rf"|\(?0\d{{3}}\)?{_SEP}\d{{3}}{_SEP}\d{{3}}"  # 0712 345 678, (0712) 345678
    rf"|0\d{{2}}{_SEP}\d{{3}}{_SEP}\d{{4}}"  # 071 234 5678
    rf"|[17]\d{{2}}[\s.\-]\d{{3}}[\s.\-]\d{{3}}"  # 712 345 678
    r"|[17]\d{8}"  # 712345678
    r")(?!\d)"
)
# A long digit run that is not phone-shaped but was surely meant as one (0..., +..., 254..., 10+ digits).
_PHONE_ATTEMPT = re.compile(r"(?<![\w.,])(?:\+\d{6,}|0\d{6,}|254\d{7,}|\d{10,})(?![\d.,]*\d)")

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CUR_BEFORE = r"(?:kshs?|kes|shs?|shillings?)\.?"
_CUR_AFTER = r"(?:kshs?|kes|shs?|shillings?|bob|/-|/=)"
_MULT_AFTER = {"k": 1000, "thao": 1000, "thousand": 1000, "grand": 1000, "hundred": 100}
_DIGIT_AMOUNT = re.compile(
    rf"(?<![\w.,/+*=^-])(?:(?P<before>{_CUR_BEFORE})\s*)?(?P<num>{_NUM})"
    rf"(?:\s*(?P<mult>k|thao|thousand|grand|hundred)\b)?(?:\s*(?P<after>{_CUR_AFTER}))?"
    r"(?![\w.,]*\d)(?!\w)(?!\s*[-+*/=^x]\s*\d)",
    re.IGNORECASE,
)
# Numbers that are clearly not money: times, durations, percentages, counts of things.
_NOT_MONEY_AFTER = re.compile(
    r"\s*(?:am|pm|:|%|min|mins|minutes?|hours?|hrs?|days?|weeks?|months?|years?|people|times|x)\b",
    re.IGNORECASE,
)
_NOT_MONEY_BEFORE = re.compile(r"\b(?:times|plus|minus|divided by|multiplied by|x)\s*$", re.IGNORECASE)

_UNITS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "moja": 1, "mbili": 2, "tatu": 3, "nne": 4, "tano": 5, "sita": 6, "saba": 7, "nane": 8, "tisa": 9,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "kumi": 10, "ishirini": 20, "thelathini": 30, "arobaini": 40, "hamsini": 50,
    "sitini": 60, "sabini": 70, "themanini": 80, "tisini": 90, "mbao": 20,
}
# Swahili and Sheng put the multiplier first ("mia tano" = 500, "thao mbili" = 2000).
_PREFIX_MULT = {"mia": 100, "soo": 100, "elfu": 1000, "thao": 1000, "ngiri": 1000, "laki": 100_000}
_POSTFIX_MULT = {"hundred": 100, "thousand": 1000, "thao": 1000, "grand": 1000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_PREFIX_MULT) | set(_POSTFIX_MULT)
_CONNECTORS = {"na", "and", "a", "an"}
# Alone, these are more often other words ("that one", "mia" the name) than an amount.
_AMBIGUOUS_ALONE = {"one", "mia", "soo", "hundred", "grand", "ngiri"}
_WORD = re.compile(r"[a-z]+|\d+", re.IGNORECASE)

_PURPOSE = re.compile(r"(?<!\w)(?:kwa ajili ya|as payment for|being payment for|payment for|for|ya|towards)\s+",
                      re.IGNORECASE)
_PURPOSE_END = re.compile(
    r"\s*(?:[,;!?]|\.(?:\s|$)|\n|\b(?:to|from|kwa|on|at|number|namba)?\s*<PHONE>|<PHONE>|\band (?:check|tell|let)\b)",
    re.IGNORECASE,
)
_FILLER_TAIL = re.compile(
    r"(?:\s+(?:please|pls|plz|asap|now|today|tafadhali|thanks|thank you|asante|sasa hivi|haraka|bana))+\s*$",
    re.IGNORECASE,
)

_SEND_WORDS = re.compile(
    r"\b(?:send|tuma|tumia|nitumie|nitumia|mtumie|mtumia|tumie|lipa|lipe|nilipe|alipe|lipia|pay|request|"
    r"charge|bill|collect|prompt|push|stk|transfer|invoice)\b",
    re.IGNORECASE,
)
_STATUS_WORDS = re.compile(
    r"\b(?:status|check|track|receipt|update|(?:go|gone|went|gone|come|came) through|"
    r"(?:has|have|did|is|was)\b[^.?!]{0,40}?\b(?:paid|pay|complete|completed|done|successful|succeed|"
    r"worked|work|arrived|arrive|received|receive|confirmed)|"
    r"paid yet|what happened|imefika|imeingia|imepita|imeenda|ilienda|imekamilika|imelipwa|amelipa|"
    r"wamelipa|ameshalipa|ashalipa|amelipia|imefaulu|iko aje|imeweza)\b",
    re.IGNORECASE,
)
_NOT_A_PAYMENT = re.compile(
    r"^\s*(?:how|why|where|when|what|can i|should i)\b|"
    r"\b(?:joke|poem|story|song|email|e-mail|sms|text message|letter|photo|picture|file|link|recipe)s?\b",
    re.IGNORECASE,
)
_RETRY_WORDS = re.compile(
    r"^(?:please\s+)?(?:try (?:it )?again|retry|resend|re-send|send (?:it )?again|again|jaribu tena|tuma tena|tena)\b",
    re.IGNORECASE,
)
_HELP_WORDS = re.compile(
    r"^(?:hi|hello|hey|hallo|habari|niaje|mambo|sasa|vipi|jambo|hujambo|salaam|salamu|yo|howdy|help|menu|start|"
    r"good (?:morning|afternoon|evening)|msaada|saidia)\b|"
    r"what (?:can|do) you do|how (?:does|do) (?:this|it|you) work|who are you|what are you|how do i|"
    r"\bhelp\b|\bmsaada\b|unaweza kufanya nini|unafanya nini",
    re.IGNORECASE,
)
# Questions about the service itself, even when they name a send word ("what is an STK push?").
_ABOUT = re.compile(r"\b(?:who pays|who is paying|what is (?:an? )?(?:m-?pesa|stk)|what does .{0,20}\bdo\b)",
                    re.IGNORECASE)
_YES = {
    "yes", "y", "yeah", "yep", "yup", "ya", "ok", "okay", "k", "sure", "ndio", "ndiyo", "eeh", "eh", "sawa",
    "poa", "go ahead", "proceed", "confirm", "confirmed", "do it", "send it", "yes please", "of course",
    "correct", "go", "fine", "sawa sawa", "ndio tuma", "tuma", "endelea", "yes send", "yes send it",
    "yes go ahead", "yes do it",
}
_NO = {
    "no", "n", "nope", "nah", "hapana", "la", "cancel", "stop", "dont", "don't", "do not", "never mind",
    "nevermind", "forget it", "acha", "wacha", "abort", "sitaki", "no thanks", "hapana asante", "cancel it",
    "don't send", "dont send", "do not send", "no don't", "no dont", "leave it", "wacha tu", "acha tu",
    "no cancel", "no stop",
}
_SAME_PHONE = re.compile(r"\b(?:same (?:number|phone|person)|that number|namba ile ile|hiyo namba|namba hiyo)\b",
                         re.IGNORECASE)


# Words around a bare answer ("his number is 0712...", "sorry, I meant 600") that change nothing.
_FILLER_WORDS = {
    "to", "from", "the", "a", "an", "is", "it", "its", "it's", "please", "pls", "kwa", "ni", "namba", "number",
    "phone", "amount", "actually", "sorry", "i", "mean", "meant", "oh", "ok", "okay", "make", "his", "her", "my",
    "their", "and", "use", "try", "instead", "then", "sasa", "basi", "na", "ya", "on", "mpesa", "m", "pesa",
    "tafadhali", "bob", "ksh", "kes", "sh", "shillings", "only", "just", "same", "that", "hiyo", "ile", "this",
}


@dataclass(frozen=True)
class Message:
    """One user message, understood. `phone` is in the written form 07XXXXXXXX / 01XXXXXXXX."""

    intent: str
    phone: str | None = None
    phone_problem: str | None = None
    amount: int | None = None
    amount_problem: str | None = None
    context: str = ""
    checkout_id: str | None = None
    same_phone: bool = False
    starts_with_purpose: bool = False

    @property
    def has_slots(self) -> bool:
        return bool(self.phone or self.phone_problem or self.amount or self.amount_problem or self.same_phone)


def understand(text: str) -> Message:
    """Read one message: what the person wants and every payment detail in it."""
    text = " ".join(str(text or "").split())
    checkout = CHECKOUT_ID.search(text)
    rest = CHECKOUT_ID.sub(" ", text)
    phone, phone_problem, rest = find_phone(rest)
    context, outside, inside = _split_purpose(rest)
    amount, amount_problem = find_amount(outside)
    if amount is None and amount_problem is None and inside:
        amount, amount_problem, context = _amount_at_end_of_purpose(inside, context)
    same_phone = bool(_SAME_PHONE.search(text)) and phone is None
    fields = dict(phone=phone, phone_problem=phone_problem, amount=amount, amount_problem=amount_problem,
                  context=context, same_phone=same_phone,
                  starts_with_purpose=bool(context) and bool(_PURPOSE.match(text)))
    return Message(intent=_intent(text, checkout, Message(intent=OTHER, **fields)),
                   checkout_id=checkout.group(0) if checkout else None, **fields)


def _intent(text: str, checkout: re.Match | None, slots: Message) -> str:
    bare = _bare(text)
    send, status = _SEND_WORDS.search(text), _STATUS_WORDS.search(text)
    if checkout:
        return STATUS
    if bare in _YES and not slots.has_slots:
        return YES
    if bare in _NO and not slots.has_slots:
        return NO
    if _RETRY_WORDS.match(bare) and not slots.has_slots:
        return RETRY
    if _ABOUT.search(text) and not slots.has_slots:
        return HELP
    if send and not slots.has_slots and _NOT_A_PAYMENT.search(text):
        return OTHER  # "send me a joke", "how do I pay my KPLC bill?": the words, not the wish
    if send and (not status or send.start() < status.start()):
        return SEND
    if status:
        return STATUS
    if slots.has_slots and _mostly_slots(text):
        return SEND
    if _HELP_WORDS.search(text):
        return HELP
    return OTHER


def _bare(text: str) -> str:
    """Lowercase words only, for matching short replies like "Yes!" or "hapana, asante"."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _mostly_slots(text: str) -> bool:
    """Without a send word, "actually 0722000000" answers a question; "what is 5 times 3" does not."""
    _, _, rest = find_phone(CHECKOUT_ID.sub(" ", text))
    _, outside, _ = _split_purpose(rest)
    words = [w for w in re.findall(r"[a-z']+", _DIGIT_AMOUNT.sub(" ", outside).lower())
             if w not in _FILLER_WORDS and w not in _NUMBER_WORDS]
    return len(words) <= 3


def find_phone(text: str) -> tuple[str | None, str | None, str]:
    """Return (phone as 07.., why it is not a valid phone, text with phone-like spans as <PHONE>)."""
    found: list[str] = []
    problems: list[str] = []

    def take(match: re.Match) -> str:
        raw = match.group(0).strip()
        try:
            phone = display_phone(normalize_phone(raw))
        except InvalidPhoneNumber as exc:
            problems.append(_phone_problem(raw, exc))
        else:
            if phone not in found:
                found.append(phone)
        return " <PHONE> "

    rest = _PHONE.sub(take, text)
    rest = _PHONE_ATTEMPT.sub(take, rest)
    if len(found) > 1:
        return None, (f"I see more than one phone number ({', '.join(found)}); I send one request at a time."), rest
    if found:
        return found[0], None, rest
    return None, (problems[0] if problems else None), rest


def _phone_problem(raw: str, exc: InvalidPhoneNumber) -> str:
    digits = re.sub(r"\D", "", raw)
    if digits.startswith("0") and len(digits) != 10:
        return f"{raw} has {len(digits)} digits; a Kenyan mobile number has 10, like 0712345678."
    if "not a mobile" in str(exc):
        return f"{raw} is not a mobile number; M-Pesa needs a Kenyan mobile line, like 0712345678."
    return f"{raw} is not a valid Kenyan mobile number; write it like 0712345678 or +254712345678."


def find_amount(text: str) -> tuple[int | None, str | None]:
    """Return (whole KES, why the amount cannot be used); (None, None) when there is none."""
    candidates: list[tuple[bool, str, object]] = []  # (marked as money, as written, value)
    taken: list[range] = []
    for match in _DIGIT_AMOUNT.finditer(text):
        taken.append(range(*match.span()))
        if not (match["before"] or match["after"]) and (
                _NOT_MONEY_AFTER.match(text, match.end()) or _NOT_MONEY_BEFORE.search(text, 0, match.start())):
            continue
        value = _digit_value(match)
        marked = bool(match["before"] or match["after"] or match["mult"])
        candidates.append((marked, match.group(0).strip(), value))
    for start, written, value in _word_numbers(text):
        if not any(start in span for span in taken):  # the "thao" of "2 thao" is already counted
            candidates.append((True, written, value))
    if not candidates:
        return None, None
    marked = [c for c in candidates if c[0]]
    chosen = marked if marked else candidates
    values = list(dict.fromkeys(str(c[2]) for c in chosen))
    if len(values) > 1:
        shown = " or ".join(c[1] for c in chosen)
        return None, f"I see more than one amount ({shown}); which one should I request?"
    written, value = chosen[0][1], chosen[0][2]
    try:
        return parse_amount(value), None
    except InvalidAmount as exc:
        if "whole shillings" in str(exc):
            return None, f"M-Pesa takes whole shillings only, and {written} has cents."
        return None, str(exc)


def _digit_value(match: re.Match) -> str:
    value = Decimal(match["num"].replace(",", ""))
    if match["mult"]:
        value *= _MULT_AFTER[match["mult"].lower()]
    return str(int(value)) if value == value.to_integral_value() else str(value)


def _word_numbers(text: str) -> list[tuple[int, str, int]]:
    """Find spelled-out amounts: "five hundred", "mia tano", "elfu 2", "thao mbili", "two thousand"."""
    tokens = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    results: list[tuple[int, str, int]] = []
    i = 0
    while i < len(tokens):
        word = tokens[i][0]
        if word not in _NUMBER_WORDS and not (word in {"a", "an"} and i + 1 < len(tokens)
                                               and tokens[i + 1][0] in _POSTFIX_MULT):
            i += 1
            continue
        j = i
        while j < len(tokens) and (tokens[j][0] in _NUMBER_WORDS or tokens[j][0] in _CONNECTORS
                                   or (tokens[j][0].isdigit() and j > i and tokens[j - 1][0] in _PREFIX_MULT)):
            j += 1
        while j > i and tokens[j - 1][0] in _CONNECTORS:
            j -= 1
        words = [t[0] for t in tokens[i:j]]
        value = _words_value(words)
        if value and not (len(words) == 1 and words[0] in _AMBIGUOUS_ALONE):
            results.append((tokens[i][1], text[tokens[i][1]:tokens[j - 1][2]], value))
        i = max(j, i + 1)
    return results


def _words_value(words: list[str]) -> int | None:
    if any(w in _PREFIX_MULT and w not in _POSTFIX_MULT for w in words) or (
            words and words[0] in _PREFIX_MULT):
        return _swahili_value(words)
    return _english_value(words)


def _english_value(words: list[str]) -> int | None:
    total = current = 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word in {"a", "an"}:
            current = current or 1
        elif word in _POSTFIX_MULT:
            multiplier = _POSTFIX_MULT[word]
            if multiplier == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * multiplier
                current = 0
        elif word.isdigit():
            current += int(word)
    return total + current or None


def _swahili_value(words: list[str]) -> int | None:
    """Swahili counts after the multiplier: elfu (moja) mia (tano) na (hamsini)."""
    words = [w for w in words if w not in {"a", "an", "and"}]
    total, pos = _sw_sum(words, 0, 10**9)
    return total if pos == len(words) and total else None


def _sw_sum(words: list[str], pos: int, below: int) -> tuple[int, int]:
    """Parse a sum of groups, each smaller than `below`; return (value, next position)."""
    total = 0
    while pos < len(words):
        start = pos
        if words[pos] == "na" and total:
            pos += 1
        value, pos = _sw_group(words, pos, below)
        if value is None:
            return total, start
        total += value
    return total, pos


def _sw_group(words: list[str], pos: int, below: int) -> tuple[int | None, int]:
    if pos >= len(words):
        return None, pos
    word = words[pos]
    if word in _PREFIX_MULT and _PREFIX_MULT[word] < below:
        multiplier = _PREFIX_MULT[word]
        count, nxt = _sw_count(words, pos + 1, multiplier)
        return multiplier * (count or 1), nxt
    if word.isdigit():
        return int(word), pos + 1
    if word in _TENS and _TENS[word] < below:
        value, pos = _TENS[word], pos + 1
        if pos + 1 < len(words) and words[pos] == "na" and words[pos + 1] in _UNITS and _UNITS[words[pos + 1]] < 10:
            return value + _UNITS[words[pos + 1]], pos + 2
        if pos < len(words) and words[pos] in _UNITS and _UNITS[words[pos]] < 10:
            return value + _UNITS[words[pos]], pos + 1
        return value, pos
    if word in _UNITS and _UNITS[word] < below:
        return _UNITS[word], pos + 1
    return None, pos


def _sw_count(words: list[str], pos: int, multiplier: int) -> tuple[int | None, int]:
    """The count after a multiplier: one unit after "mia", up to 999 after "elfu", up to 99 after "laki"."""
    if pos >= len(words):
        return None, pos
    if words[pos].isdigit():
        return int(words[pos]), pos + 1
    if multiplier == 100:
        word = words[pos]
        return (_UNITS[word], pos + 1) if word in _UNITS and _UNITS[word] < 10 else (None, pos)
    limit = 1000 if multiplier == 1000 else 100
    value, nxt = _sw_group(words, pos, limit)
    if value is None:
        return None, pos
    if multiplier == 1000 and value >= 100:  # "elfu mia tano" = 500 thousand; take its tens too
        more, after = _sw_group(words, nxt + (words[nxt:nxt + 1] == ["na"]), 100)
        if more is not None:
            value, nxt = value + more, after
    return value, nxt


def _split_purpose(text: str) -> tuple[str, str, str]:
    """Return (purpose, text outside the purpose, raw purpose text) from "... for lunch ..."."""
    for marker in _PURPOSE.finditer(text):
        start = marker.end()
        end_match = _PURPOSE_END.search(text, start)
        end = end_match.start() if end_match else len(text)
        raw = text[start:end]
        purpose = _clean_purpose(raw)
        if purpose and not purpose.startswith("<"):
            return purpose, text[:marker.start()] + " " + text[end:], raw
    return "", text, ""


def _clean_purpose(raw: str) -> str:
    purpose = _FILLER_TAIL.sub("", raw.strip())
    purpose = purpose.strip(" \t.,;:!?-'\"")
    purpose = _FILLER_TAIL.sub("", purpose).strip(" \t.,;:!?-'\"")
    return purpose[:100]


def _amount_at_end_of_purpose(raw: str, context: str) -> tuple[int | None, str | None, str]:
    """ "for lunch 500 bob": the amount came after the purpose."""
    for match in _DIGIT_AMOUNT.finditer(raw):
        if raw[match.end():].strip(" .,!?") == "" or match["before"] or match["after"]:
            amount, problem = find_amount(match.group(0))
            trimmed = _clean_purpose(raw[:match.start()] + " " + raw[match.end():])
            return amount, problem, trimmed
    return None, None, context
