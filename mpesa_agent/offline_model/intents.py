"""What one chat message asks for: intent, phone, amount, purpose, checkout ID, period. Pure text, no ADK.

English and everyday Kenyan phrasing: "tuma 500 kwa 0712 345 678 ya lunch", "nitumie 1.5k",
"Ksh. 1,200", "500 bob", "mia tano", "elfu moja mia tano", "2 thao"; and questions about past
payments: "my last payment", "nimepokea ngapi leo", "which payments failed this week?", "nani hajalipa?".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal

import phonenumbers
from phonenumbers.geocoder import country_name_for_number

from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, display_phone, normalize_phone, parse_amount

SEND, STATUS, HELP, YES, NO, RETRY, OTHER = "send", "status", "help", "yes", "no", "retry", "other"
MONEY_OUT = "money_out"  # "refund 0712345678 500", "rudisha 500 kwa ...": money *to* a customer, which a push cannot do
RETRY_UNANSWERED = "retry_unanswered"  # "retry the ones that didn't answer"
LAST, LIST, TOTALS = "last", "list", "totals"  # questions about stored payments, answered from any chat

CHECKOUT_ID = re.compile(r"\bws_CO_\w+", re.IGNORECASE)
MORE_THAN_ONE_PHONE = "I see more than one phone number"
MAX_REQUESTS = 200  # in one sentence; a longer list is pasted one per line, or attached as a CSV
BULK_FROM = 3  # three or more people in one message make one bulk request; two go one after another

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CUR_BEFORE = r"(?:kshs?|kes|shs?|shillings?)\.?"
_CUR_AFTER = r"(?:kshs?|kes|shs?|shillings?|bob|/-|/=)"
_MULT_AFTER = {"k": 1000, "thao": 1000, "thousand": 1000, "grand": 1000, "hundred": 100, "million": 1_000_000,
               "milioni": 1_000_000, "mln": 1_000_000, "billion": 1_000_000_000}
_DIGIT_AMOUNT = re.compile(
    rf"(?<![\w.,/+*=^-])(?:(?P<before>{_CUR_BEFORE})\s*)?(?P<num>{_NUM})"
    rf"(?:\s*(?P<mult>k|thao|thousand|grand|hundred|million|milioni|mln|billion)\b)?(?:\s*(?P<after>{_CUR_AFTER}))?"
    r"(?![\w.,]*\d)(?!\w)(?!\s*[-+*/=^x]\s*\d)",
    re.IGNORECASE,
)
# Numbers that are clearly not money: times, durations, percentages, counts of things.
_NOT_MONEY_AFTER = re.compile(
    r"\s*(?:am|pm|:|%|min|mins|minutes?|hours?|hrs?|days?|weeks?|months?|years?|people|persons?|members?|"
    r"wanachama|watu|watoto|kids|children|items?|pieces?|pcs|vitu|kg|kgs|kilos?|litres?|liters?|km|times|x)\b",
    re.IGNORECASE,
)
# "watu 5", "nina watoto 2": Swahili names what it counts first.
_NOT_MONEY_BEFORE = re.compile(r"\b(?:times|plus|minus|divided by|multiplied by|x|watu|watoto|wanachama|members|"
                               r"people|vitu|items)\s*$", re.IGNORECASE)
# "500kwa", "send500", "from0712...": an amount or a number glued to a word is read as if spaced.
_GLUED_BEFORE = re.compile(r"\b(send|tuma|lipa|pay|request|charge|collect|bill|push|nitumie|mtumie|to|from|kwa|"
                           r"for|ya)(?=\d)", re.IGNORECASE)
_GLUED_AFTER = re.compile(r"(?<=\d)(kwa|to|from|for|ya)\b", re.IGNORECASE)

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
_PREFIX_MULT = {"mia": 100, "soo": 100, "elfu": 1000, "thao": 1000, "ngiri": 1000, "laki": 100_000,
                "milioni": 1_000_000, "bilioni": 1_000_000_000}
_POSTFIX_MULT = {"hundred": 100, "thousand": 1000, "thao": 1000, "grand": 1000, "million": 1_000_000,
                 "millions": 1_000_000, "milioni": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_PREFIX_MULT) | set(_POSTFIX_MULT)
_CONNECTORS = {"na", "and", "a", "an"}
# Alone, these are more often other words ("that one", "joke moja", "mia" the name) than an amount,
# and a 1-9 KSh request is never what someone meant: ask instead.
_AMBIGUOUS_ALONE = {"mia", "soo", "hundred", "grand", "ngiri", "million", "milioni", "billion", "bilioni",
                    *(word for word, value in _UNITS.items() if value < 10)}
_WORD = re.compile(r"[a-z]+|\d+", re.IGNORECASE)

_PURPOSE = re.compile(r"(?<!\w)(?:kwa ajili ya|as payment for|being payment for|payment for|for|ya|towards)\s+",
                      re.IGNORECASE)
_PURPOSE_END = re.compile(
    r"\s*(?:[;!?]|,(?!\d{3})|\.(?:\s|$)|\n|\b(?:to|from|kwa|on|at|number|namba)?\s*<PHONE>|<PHONE>|\band (?:check|tell|let)\b)",
    re.IGNORECASE,
)
_FILLER_TAIL = re.compile(
    r"(?:\s+(?:please|pls|plz|asap|now|today|tafadhali|thanks|thank you|asante|sasa hivi|haraka|bana))+\s*$",
    re.IGNORECASE,
)

_SEND_WORDS = re.compile(
    r"\b(?:send|tuma|tumia|nitumie|nitumia|mtumie|mtumia|tumie|lipa|lipe|nilipe|alipe|lipia|pay|request|"
    r"kutuma|kumtumia|kutumia|kutumiwa|kulipwa|kumlipisha|kulipisha|"
    r"charge|bill|collect|prompt|push|stk|transfer|invoice)\b",
    re.IGNORECASE,
)
_STATUS_WORDS = re.compile(
    r"\b(?:status|check|track|receipt|update|(?:go|gone|went|gone|come|came) through|"
    r"(?:has|have|did|is|was)\b[^.?!]{0,40}?\b(?:paid|pay|complete|completed|done|successful|succeed|"
    r"worked|work|arrived|arrive|received|receive|confirmed)|"
    r"paid yet|what happened|imefika|imeingia|imepita|imeenda|ilienda|imekamilika|imelipwa|amelipa|"
    r"wamelipa|ameshalipa|ashalipa|amelipia|alilipa|walilipa|ililipwa|imefaulu|iko aje|imeweza|"
    r"haijaingia|haijafika|haijapita|hajalipa|imekwama|ilifanyika|kilitokea|imefeli|ilifeli|"
    r"why (?:did|has|was|is) (?:it|the (?:payment|request|prompt)|my payment)\b[^.?!]{0,20}?"
    r"\b(?:fail|failed|not|cancel))\b",
    re.IGNORECASE,
)
_NOT_A_PAYMENT = re.compile(
    r"^\s*(?:how|why|where|when|what|can i|should i)\b|"
    r"\b(?:joke|poem|story|song|email|e-mail|sms|text message|letter|photo|picture|file|link|recipe|"
    r"hadithi|wimbo|utani|methali|barua|picha|niambie|tell me)s?\b",
    re.IGNORECASE,
)
_RETRY_WORDS = re.compile(
    r"^(?:please\s+)?(?:try (?:it )?again|retry|resend|re-send|send (?:it )?again|again|jaribu tena|tuma tena|tena)\b",
    re.IGNORECASE,
)
# "retry the ones that didn't answer", "resend to everyone who did not respond", "jaribu tena wale hawakujibu"
_RETRY_UNANSWERED = re.compile(
    r"^(?:please\s+)?(?:try (?:it |them )?again|retry|resend|re-send|send (?:it |them )?again|jaribu tena|tuma tena)\b"
    r".*(?:\b(?:did ?n[o']?t|have ?n[o']?t|has ?n[o']?t|never|no)\s+(?:answer|respond|reply|pick)"
    r"|\bunanswered\b|\bhawaku(?:jibu|itika|pokea)\b|\bno answer\b)",
    re.IGNORECASE,
)
_HELP_WORDS = re.compile(
    r"^(?:hi|hello|hey|hallo|habari|niaje|mambo|sasa|vipi|jambo|hujambo|salaam|salamu|yo|howdy|help|menu|start|"
    r"good (?:morning|afternoon|evening)|msaada|saidia)\b|"
    r"what (?:can|do) you do|how (?:does|do) (?:this|it|you) work|who are you|what are you|how do i|"
    r"\bhelp\b|\bmsaada\b|unaweza kufanya nini|unafanya nini",
    re.IGNORECASE,
)
# Money to a customer (a refund, a reversal, a payout): an STK Push only asks a phone to pay, so
# "refund 0712345678 500" must never become a prompt charging that customer 500 more.
_MONEY_OUT = re.compile(
    r"\b(?:refund(?:s|ed|ing)?|reimburse|reverse|reversal|rudish(?:a|ia|ie)|mrudishie|warudishie|"
    r"nirudishie|(?:send|give)\b[^.?!]{0,40}?\bback|"
    r"return(?:ed)? (?:the |their |his |her |my )?(?:money|pesa|cash|funds|payment|\d+)|"
    r"pay ?out|payout|disburse|b2c)\b",
    re.IGNORECASE)
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
    "no cancel", "no stop", "ghairi", "sitisha", "usitume", "hapana usitume",
}
# Cancelling at the start of a message: "achana nayo", "cancel that", "forget it", "usitume".
_CANCEL = re.compile(
    r"(?:(?:no|hapana|la|ah|aah|oh|sorry|samahani|wait)\b[\s,.!]*)*"
    r"(?:cancel|achana|acha|wacha|forget|never ?mind|usitume|sitaki|stop|abort|leave it|sahau|ghairi|sitisha|"
    r"don'?t send|do not send|usiitume|usilipe|hakuna haja)\b",
    re.IGNORECASE,
)
# "don't send it to 0712...", "usitume kwa 0712...": a number after a negation is what *not* to do.
_NEGATED_SEND = re.compile(
    r"\b(?:(?:don'?t|do not|dont|never|no need to)\s+(?:(?:it|that|this|the|a|any|them|him|her)\s+)?"
    r"(?:send|push|prompt|charge|request|bill|ask|tuma)|usitume|usimtumie|usiitume|usitumie|usimlipishe)\b",
    re.IGNORECASE)
# After a cancellation or a negation, a new clause that asks for a request: "cancel that, send 600 to ...".
_THEN_SEND = re.compile(
    r"(?:[,.;!]|\b(?:and|then|na|instead|but|ila|lakini|badala yake)\b)\s*"
    r"(?:(?:please|pls|just|rather|instead|now)\s+)?(?:send|tuma|request|charge|bill|collect|prompt|push)\b",
    re.IGNORECASE)
# Where a correction or a cancellation starts; what follows replaces what came before.
_CORRECTION = re.compile(
    r"\b(?:no,? wait|wait|actually|sorry|samahani|pole|i mean|i meant|nilimaanisha|namaanisha|make it|make that|"
    r"change (?:it|that|the amount|the number) to|badala yake|oops|correction|rather|nilikosea|si hiyo|"
    r"no(?=[\s,]+(?:it'?s|its|make|send|tuma|ni|the|\d|\+))|hapana(?=[\s,]+(?:ni|tuma|\d|\+))|"
    r"cancel|achana|forget (?:it|that|about it)|never ?mind|usitume|sahau|ghairi|sitisha)\b",
    re.IGNORECASE,
)
_SAME_PHONE = re.compile(r"\b(?:same (?:number|phone|person)|that number|namba ile ile|hiyo namba|namba hiyo)\b",
                         re.IGNORECASE)


# Words around a bare answer ("his number is 0712...", "sorry, I meant 600") that change nothing.
_FILLER_WORDS = {
    "to", "from", "the", "a", "an", "is", "it", "its", "it's", "please", "pls", "kwa", "ni", "namba", "number",
    "phone", "amount", "actually", "sorry", "i", "mean", "meant", "oh", "ok", "okay", "make", "his", "her", "my",
    "their", "and", "use", "try", "instead", "then", "sasa", "basi", "na", "ya", "on", "mpesa", "m", "pesa",
    "tafadhali", "bob", "ksh", "kes", "sh", "shillings", "only", "just", "same", "that", "hiyo", "ile", "this",
    "no", "wait", "samahani", "pole", "correction", "nilimaanisha", "badala", "yake", "oops", "change", "instead",
    "rather", "hapana", "not",
}


@dataclass(frozen=True)
class Request:
    """One payment request of several in a message: "500 to 0712... and 300 to 0722..."."""

    phone: str
    amount: int
    context: str = ""


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
    correction: bool = False  # "no wait make it 250", "samahani ni 07..": replaces what was said before
    requests: tuple[Request, ...] = ()  # two or more payments, each phone with its own amount
    period: str | None = None  # "today", "this_week", ... (payments/periods.py PERIODS)
    status_filter: str | None = None  # for LIST: completed, failed, pending, unknown or unpaid
    problems: tuple[str, ...] = ()  # a pasted list's lines that cannot be read, each saying why
    asks_who_paid: bool = False  # "who hasn't paid?", "nani hajalipa": about the chat's bulk request, if it has one
    later: str = ""  # "kesho", "tomorrow at 9am", "every month": a time the request cannot wait for

    @property
    def bulk(self) -> bool:
        """Enough people for one bulk request (sent by the server) rather than one push after another."""
        return len(self.requests) >= BULK_FROM or bool(self.problems)

    @property
    def has_slots(self) -> bool:
        return bool(self.phone or self.phone_problem or self.amount or self.amount_problem or self.same_phone)


def understand(text: str) -> Message:
    """Read one message: what the person wants and every payment detail in it.

    A correction ("... no wait make it 250", "samahani ni 0711 000 223") wins over what came before
    it in the message; a cancellation ("achana nayo", "cancel that") with nothing after it cancels.
    """
    listed = _listed(str(text or ""))
    if listed is not None:
        return listed
    text = " ".join(str(text or "").split())
    if _RETRY_UNANSWERED.match(text):
        return Message(intent=RETRY_UNANSWERED)
    text = _GLUED_AFTER.sub(r" \1", _GLUED_BEFORE.sub(r"\1 ", text))
    negated = _NEGATED_SEND.search(text)
    if negated:  # the numbers in it are what not to do: never a push; a later "..., send to X" replaces it
        then = _THEN_SEND.search(text, negated.end())
        if then is None:
            return Message(intent=NO)
        return replace(understand(text[then.start():].lstrip(",.;! ")), correction=True)
    marker = _last_marker(text)
    if marker is None:
        msg = _read(text)
        if msg.intent == SEND and (msg.phone_problem or "").startswith(MORE_THAN_ONE_PHONE):
            requests = _several(text)
            if requests:
                return Message(intent=SEND, requests=requests)
        return msg
    before, after = _read(text[:marker.start()]), _read(text[marker.start():])
    cancelled = bool(_CANCEL.match(text, marker.start()))
    if cancelled and not _THEN_SEND.search(text, marker.end()):
        return Message(intent=NO)  # "cancel the request to 0712...": a cancellation, whatever it names
    if not after.has_slots and not after.checkout_id:
        if cancelled:
            return Message(intent=NO)
        if not before.has_slots:
            return _read(text)
    merged = {name: getattr(after, name) or (None if cancelled else getattr(before, name))
              for name in ("phone", "amount", "context", "checkout_id")}
    # a problem in the corrected part stands; one in the replaced part only if nothing replaced it
    merged["phone_problem"] = after.phone_problem or (
        None if cancelled or after.phone or after.same_phone else before.phone_problem)
    merged["amount_problem"] = after.amount_problem or (None if cancelled or after.amount else before.amount_problem)
    merged["same_phone"] = after.same_phone or (not cancelled and before.same_phone and not after.phone)
    merged["later"] = after.later or ("" if cancelled else before.later)
    intent = after.intent if after.intent != OTHER else (SEND if (after.has_slots or before.intent == SEND) else OTHER)
    if intent in (YES, NO, HELP) and after.has_slots:
        intent = SEND
    return Message(intent=intent, correction=True, starts_with_purpose=False, **merged)


# Where one request ends and the next begins; "1,200" is one amount, not two.
_SEPARATOR = re.compile(r"\s*(?:;|&|,(?!\d{3})|\b(?:and|na|then|plus|also|pia)\b)\s*", re.IGNORECASE)
_EACH = re.compile(r"\b(?:each|apiece|every one|kila mmoja|kila mtu|kila namba|kila moja)\b", re.IGNORECASE)


def _several(text: str) -> tuple[Request, ...]:
    """ "send 500 to 0712.. and 300 to 0722..", "request 200 each from 0711.., 0722..": every phone
    with the amount stated for it, or () when any pairing is in doubt (the caller then asks)."""
    chunks, start = [], 0
    for separator in _SEPARATOR.finditer(text):
        piece = text[start:separator.start()]
        if any(find_phone(piece)[:2]):  # a request ends after its phone, at the next separator
            chunks.append(piece)
            start = separator.end()
    chunks.append(text[start:])
    reads = [_read(chunk) for chunk in chunks]
    if not 2 <= len(reads) <= MAX_REQUESTS or any(
            r.phone_problem or r.amount_problem or r.same_phone or r.checkout_id or not r.phone for r in reads):
        return ()
    phones = [r.phone for r in reads]
    amounts = [r.amount for r in reads]
    contexts = [r.context for r in reads]
    if len(set(phones)) != len(phones):
        return ()
    if not all(amounts):
        stated = {a for a in amounts if a}
        if not _EACH.search(text) or len(stated) != 1:
            return ()
        amounts = [stated.pop()] * len(reads)
        if len({c for c in contexts if c}) == 1:  # "200 each for chama": the purpose is everyone's
            contexts = [next(c for c in contexts if c)] * len(reads)
    return tuple(Request(p, a, c) for p, a, c in zip(phones, amounts, contexts))


_LEADING_AMOUNT = re.compile(r"^(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?(?=$|[\s,;\t])")
_CELL_SEPARATORS = re.compile(r"^[\s,;\t:=-]+|[\s,;\t]+$")
_HEADER = re.compile(r"^\W*(?:phone|msisdn|mobile|number|simu|namba)\b", re.IGNORECASE)


def _listed(text: str) -> Message | None:
    """A pasted list or a CSV, one person per line ("0712345678,500,June", "0722 000 000 - 300"):
    a bulk request when BULK_FROM or more lines have a phone. Lines before the first phone may say
    the amount for each and the purpose ("Request 500 from each of these for the chama:") or be a
    header; a later line that cannot be read is a problem naming its line."""
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    phoned = [(number, line, find_phone(line)) for number, line in lines]
    if sum(1 for _, _, (phone, problem, _) in phoned if phone or problem) < BULK_FROM:
        return None
    first = next(i for i, (_, _, (phone, problem, _)) in enumerate(phoned) if phone or problem)
    intro = " ".join(line for _, line in lines[:first] if not _HEADER.match(line))
    told = _read(" ".join(intro.split())) if intro else Message(intent=OTHER)
    each, purpose = told.amount, _purpose(told.context)
    requests, problems = [], []
    for number, line, (phone, problem, rest) in phoned[first:]:
        if problem or not phone:
            problems.append(f"line {number} ({line[:40]}): {problem or 'no phone number'}")
            continue
        amount, reference, why = _row_amount(rest.replace("<PHONE>", " ", 1), each)
        if why:
            problems.append(f"line {number} ({line[:40]}): {why}")
            continue
        requests.append(Request(phone, amount, reference))
    return Message(intent=SEND, context=purpose, requests=tuple(requests), problems=tuple(problems))


def _row_amount(rest: str, each: int | None) -> tuple[int | None, str, str | None]:
    """(amount, reference, problem) from what a line holds besides its phone."""
    rest = _CELL_SEPARATORS.sub("", rest)
    leading = _LEADING_AMOUNT.match(rest)
    if leading:
        amount, reference = int(leading["num"].replace(",", "")), rest[leading.end():]
    else:
        read = _read(" ".join(rest.split()))
        if read.amount_problem:
            return None, "", _sentence_case(read.amount_problem)
        amount, reference = read.amount or each, read.context or (rest if not read.amount else "")
    if not amount:
        return None, "", "no amount (write it after the number, e.g. 0712345678,500)"
    return amount, _purpose(_CELL_SEPARATORS.sub("", reference)), None


def _purpose(text: str) -> str:
    """ "the chama" -> "chama": what a request is for, as the customer will see it."""
    text = " ".join(text.split())
    return re.sub(r"^(?:for|ya|kwa|the)\s+", "", text, flags=re.IGNORECASE).strip(" .:;,")[:100]


def _sentence_case(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _last_marker(text: str) -> re.Match | None:
    """The last "no wait", "actually", "samahani", "cancel that"... that starts a correction."""
    markers = [m for m in _CORRECTION.finditer(text)]
    return markers[-1] if markers else None


# "500 x2", "twice", "mara mbili": one prompt or two? (never guessed: each prompt is money asked of someone)
_REPEATED = re.compile(r"(?<![\w.])(?:x\s?[2-9]|[2-9]\s?x(?!\s*[a-z])|twice|thrice|two times|three times|[2-9] times|"
                       r"mara (?:mbili|tatu|nne|tano|[2-9]))(?![\w.])", re.IGNORECASE)


# A time for the request ("send 500 to 0712... kesho", "tomorrow at 9am", "kila mwezi"): a push goes
# out at once and its prompt lasts about a minute, so the person is asked whether to send it now.
_DAYS = (r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
         r"jumatatu|jumanne|jumatano|alhamisi|ijumaa|jumamosi|jumapili")
_LATER = re.compile(
    r"\b(?:kesho(?: kutwa)?|tomorrow|tmrw|tmr|later|baadaye|tonight|usiku|jioni|asubuhi|mchana|"
    rf"next (?:week|month|year|{_DAYS})|wiki ijayo|mwezi ujao|(?:on )?(?:{_DAYS})|"
    r"on (?:the )?\d{1,2}(?:st|nd|rd|th)\b|"
    r"(?:at )?\d{1,2}(?:[:.]\d{2})? ?(?:am|pm)|saa (?:moja|mbili|tatu|nne|tano|sita|saba|nane|tisa|kumi)|"
    r"in (?:an hour|a few (?:minutes|hours)|\d+ ?(?:minutes|mins|min|hours|hrs|hr|days))|"
    r"(?:at the )?end (?:of )?(?:the )?month|mwisho wa mwezi|every (?:day|week|month)|kila (?:siku|wiki|mwezi)|"
    r"monthly|weekly|daily)\b",
    re.IGNORECASE)


# "07I2345678", "0712345O78": a phone number typed with a letter O or I (or l) for a digit. ("O712345678"
# is still read: its nine digits after the O are a whole number, 0712345678.)
_LETTERED_PHONE = re.compile(r"(?<![\w+])(?=[\dOoIl]*[OoIl])[0Oo][17Il][\dOoIl]{8}(?!\w)")


def _read(text: str) -> Message:
    checkout = CHECKOUT_ID.search(text)
    rest = CHECKOUT_ID.sub(" ", text)
    lettered = _LETTERED_PHONE.search(rest)
    phone, phone_problem, rest = find_phone(rest)
    if lettered and phone is None:  # never read as a number: the person types the digits again
        phone_problem = (f"{lettered.group(0)} has a letter in it (an O or an I?); type the number in digits, "
                         "like 0712345678.")
        rest = _LETTERED_PHONE.sub(" ", rest)
    context, outside, inside = _split_purpose(rest)
    amount, amount_problem = find_amount(outside)
    if amount is None and amount_problem is None and inside:
        amount, amount_problem, context = _amount_at_end_of_purpose(inside, context)
    if amount is not None and _REPEATED.search(outside):
        amount, amount_problem = None, (f"Do you mean one request for {amount:,} KSh, or {amount:,} KSh more than once? "
                                        "One prompt asks for one amount: tell me the total for one request.")
    same_phone = bool(_SAME_PHONE.search(text)) and phone is None
    context = context or _debtor(text)
    later = _LATER.search(outside)
    fields = dict(phone=phone, phone_problem=phone_problem, amount=amount, amount_problem=amount_problem,
                  context=context, same_phone=same_phone, later=later.group(0) if later else "",
                  starts_with_purpose=bool(context) and bool(_PURPOSE.match(text)))
    return Message(intent=_intent(text, checkout, Message(intent=OTHER, **fields)),
                   checkout_id=checkout.group(0) if checkout else None, period=_period_in(text),
                   status_filter=_status_in(text), asks_who_paid=bool(_UNPAID_WORDS.search(text)), **fields)


# Questions about stored payments. A period names Kenyan days; a status word filters a list.
_PERIODS = (
    ("last_7_days", r"(?:last|past) (?:7|seven) days|siku saba(?: zilizopita)?"),
    ("last_30_days", r"(?:last|past) (?:30|thirty) days|siku thelathini"),
    ("yesterday", r"yesterday|jana"),
    ("last_week", r"last week|past week|wiki (?:iliyopita|jana)"),
    ("this_week", r"this week|wiki hii|hii wiki"),
    ("last_month", r"last month|mwezi (?:uliopita|jana)"),
    ("this_month", r"this month|mwezi huu|hii mwezi"),
    ("today", r"today|leo|this morning|tonight|so far"),
)
_PERIOD_WORDS = [(name, re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)) for name, pattern in _PERIODS]
_UNPAID = re.compile(r"\b(?:unpaid|not (?:yet )?paid|(?:has|have|did|is|are)(?: not|n'?t) (?:yet )?paid|yet to pay|"
                     r"hajalipa|hawajalipa|hawaja ?lipa|bado hajalipa|hazijalipwa|haijalipwa|hayajalipwa|owes? me|wadeni|debtors?)\b", re.IGNORECASE)
_STATUS_FILTERS = (
    ("failed", r"(?:zilizo|yaliyo|zime|zili|yame|yali|ime|ili)?(?:fail(?:ed|s|ing)?|feli)|hayakufaulu|hazikufaulu|"
               r"zilizoshindwa|yaliyoshindwa|declined|cancell?ed|rejected"),
    ("pending", r"pending|waiting|still open|inasubiri|zinasubiri|yanayosubiri|bado"),
    ("completed", r"completed|successful|succeeded|paid ones|zilizolipwa|yaliyolipwa|zimelipwa|zilifaulu"),
)
_STATUS_FILTER_WORDS = [(name, re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)) for name, pattern in _STATUS_FILTERS]
_TOTALS = re.compile(
    r"\bhow much (?:money )?(?:did|have|has|had) (?:i|we)\b|\bhow much (?:came in|(?:have|has) come in|was paid|"
    r"did (?:they|customers|people) pay)\b|\b(?:total|totals|takings|revenue|sales|mauzo|jumla|collections?)\b|"
    r"\b(?:nimepokea|tumepokea|nimekusanya|tumekusanya|nimepata|tumepata|nimeingiza|tumeingiza|imeingia) "
    r"(?:pesa )?(?:ngapi|kiasi gani|how much)\b|\bpesa ngapi\b|\bngapi (?:leo|jana|wiki|mwezi)\b|"
    r"\bhow many (?:people |customers |clients |wateja )?(?:have |has )?paid\b|\bhesabu\b",
    re.IGNORECASE)
_LAST = re.compile(r"\b(?:last|latest|most recent|previous) (?:payment|one|request|transaction|prompt|push|stk|mpesa|malipo)s?\b|"
                   r"\bmalipo ya mwisho\b|\b(?:request|payment) ya mwisho\b|\bya mwisho\b", re.IGNORECASE)
_LIST = re.compile(r"\b(?:which|what|list|show|see|view|display|all|my|onyesha|nionyeshe|zipi|gani|nani|who)\b.{0,30}?"
                   r"\b(?:payments?|requests?|transactions?|malipo|prompts?|customers?|wateja)\b|"
                   r"\b(?:payments?|requests?|transactions?|malipo|prompts?)\b.{0,20}?\b(?:failed|fail|pending|"
                   r"completed|successful|today|yesterday|this week|last week|leo|jana)\b|"
                   r"\b(?:who|nani|which|wepi|gani)\b", re.IGNORECASE)


def _period_in(text: str) -> str | None:
    return next((name for name, words in _PERIOD_WORDS if words.search(text)), None)


def _status_in(text: str) -> str | None:
    if _UNPAID.search(text):
        return "unpaid"
    return next((name for name, words in _STATUS_FILTER_WORDS if words.search(text)), None)


def _report(text: str, slots: Message) -> str | None:
    """LAST, LIST or TOTALS for a question about stored payments (never with an amount: that is a request)."""
    if slots.amount or slots.amount_problem:
        return None
    if _TOTALS.search(text) and not slots.phone:
        return TOTALS
    if _LAST.search(text):
        return LAST
    status = _status_in(text)
    if status and re.search(r"\b(?:who|nani|which|what|wepi|zipi|gani|list|show|onyesha|nionyeshe|ambao|ambazo|ambayo|"
                            r"unpaid)\b",
                            text, re.IGNORECASE):
        return LIST
    if status and _period_in(text) and not slots.phone:  # "stk zilizofail leo", "pending this week"
        return LIST
    if slots.phone and re.search(r"\b(?:payments|requests|transactions|history|malipo)\b", text, re.IGNORECASE):
        return LIST
    if _LIST.search(text) and (status or _period_in(text) or re.search(
            r"\b(?:payments|requests|transactions|malipo)\b", text, re.IGNORECASE)):
        return LIST
    return None


# "Wanjiku owes me 350", "Otieno ananidai elfu moja": who owes is what the request is for.
_OWES = re.compile(r"^(?:(?:my|our) (?:customer|client|friend|neighbour|neighbor) |mteja |jamaa )?"
                   r"(?P<name>[a-z][a-z'-]{1,30}) (?:owes (?:me|us)|ananidai|anatudai|has not paid|hajalipa)\b",
                   re.IGNORECASE)
_NOT_A_NAME = {"he", "she", "they", "it", "someone", "somebody", "customer", "client", "mteja", "yeye", "huyu",
               "who", "nani", "wao", "wewe", "mimi", "nobody", "everyone", "mtu", "jamaa", "i", "you", "we", "this",
               "that"}


def _debtor(text: str) -> str:
    match = _OWES.match(text.strip())
    name = match["name"] if match else ""
    if not name or name.lower() in _NOT_A_NAME or name.lower() in _NUMBER_WORDS:
        return ""
    return f"{name[0].upper()}{name[1:]}'s debt"


def _intent(text: str, checkout: re.Match | None, slots: Message) -> str:
    bare = _bare(text)
    send, status = _SEND_WORDS.search(text), _STATUS_WORDS.search(text)
    purpose = _PURPOSE.search(text)  # "send 500 to 0712345678 for the refunded deposit": a purpose, not a payout
    if _MONEY_OUT.search(text[:purpose.start()] if purpose else text) and not _ABOUT.search(text):
        return MONEY_OUT
    if checkout:
        return RETRY if _RETRY_WORDS.match(bare) else STATUS  # "retry ws_CO_..." / "check ws_CO_..."
    if bare in _YES and not slots.has_slots:
        return YES
    if (bare in _NO or _CANCEL.match(bare)) and not slots.has_slots:
        return NO
    if _RETRY_WORDS.match(bare) and not slots.has_slots:
        return RETRY
    if _ABOUT.search(text) and not slots.has_slots:
        return HELP
    report = _report(text, slots)
    if report:
        return report
    if send and not slots.has_slots and _NOT_A_PAYMENT.search(text):
        return OTHER  # "send me a joke", "how do I pay my KPLC bill?": the words, not the wish
    if send and (not status or send.start() < status.start()):
        return SEND
    if status:
        return STATUS
    if slots.has_slots and _mostly_slots(text) and not _NOT_A_PAYMENT.search(text):
        return SEND
    if _HELP_WORDS.search(text):
        return HELP
    return OTHER


# "who hasn't paid?": about the chat's bulk request when it has one (else a question about stored payments).
_UNPAID_WORDS = re.compile(
    r"\bwho(?:'s|\s+has|\s+have|\s+is|\s+are)?\s*(?:not|n't|hasn't|haven't|hasnt|havent|didn't|didnt|did not|has not|"
    r"have not|yet to)\s+(?:yet\s+)?pa(?:id|y)\b|\bwho(?:'s|\s+has|\s+have)?\s+(?:already\s+)?paid\b|"
    r"\bhow many (?:have |has |people )?paid\b|\bnani (?:hajalipa|bado|amelipa|wamelipa)\b|"
    r"\b(?:batch|bulk request|chama requests?)\b.*\b(?:progress|status|going|done)\b",
    re.IGNORECASE)


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


# A run of digit groups joined by single spaces, dots or dashes: "+255 712 345 678", "0757 88 99 00".
# Letters may touch it ("to0768123456"); a digit, comma or dot before it may not ("1,200", "1.5").
_DIGIT_RUN = re.compile(r"(?<![\d,.])(?P<plus>\+\s?|00(?=[1-9]))?\(?\d+\)?(?:[ .\-]\(?\d+\)?)*")
_GROUP = re.compile(r"\d+")
_MAX_DIGITS = 15  # E.164


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    digits: str


def find_phone(text: str) -> tuple[str | None, str | None, str]:
    """Return (phone as 07.., why it is not a valid phone, text with phone-like spans as <PHONE>).

    Any doubt is a problem, never a guess: a foreign number (+255 712 345 678) is not read as the
    Kenyan one it contains, a landline or a wrong digit count is named, two numbers are asked about.
    """
    found: list[str] = []
    problems: list[str] = []
    spans: list[tuple[int, int]] = []
    for run in _DIGIT_RUN.finditer(text):
        body = run.end("plus") if run["plus"] else run.start()
        groups = [_Span(m.start(), m.end(), m.group(0)) for m in _GROUP.finditer(text, body, run.end())]
        international = bool(run["plus"])
        readings = {i: _read_phone(text, groups, i, international and i == 0) for i in range(len(groups))}
        i = 0
        while i < len(groups):
            j, phone, problem = readings[i]
            if j is None:
                i += 1
                continue
            # "100 712 345 678": 0100712345 or 0712345678? Another reading that starts inside this one
            # and ends after it is another way to split the same digits: ask, never pick.
            other = next((readings[k][1] for k in range(i + 1, j + 1)
                          if readings[k][0] is not None and readings[k][0] > j and readings[k][1] != phone), None)
            if other and phone:
                j = readings[next(k for k in range(i + 1, j + 1) if readings[k][1] == other)][0]
                phone, problem = None, (f"I can't tell where the phone number starts in "
                                        f"\"{_written(text, groups, i, j)}\" ({phone} or {other}?).")
            start = run.start() if international and i == 0 else groups[i].start
            spans.append((start, groups[j].end))
            if phone and phone not in found:
                found.append(phone)
            if problem:
                problems.append(problem)
            i = j + 1
    rest = text
    for start, end in reversed(spans):
        rest = rest[:start] + " <PHONE> " + rest[end:]
    if problems:
        return None, problems[0], rest
    if len(found) > 1:
        return None, (f"{MORE_THAN_ONE_PHONE} ({', '.join(found)}). For several requests, give each number "
                      "its amount, like \"500 to 0712345678 and 300 to 0722000111\"."), rest
    return (found[0] if found else None), None, rest


def _read_phone(text: str, groups: list[_Span], i: int, international: bool
                ) -> tuple[int | None, str | None, str | None]:
    """Read a phone number starting at groups[i]: (last group used, phone, problem) or (None, ..) if none."""
    first = groups[i].digits
    if international:
        return _read_international(text, groups, i)
    if first.startswith("0"):
        return _read_to_length(text, groups, i, 10, "0")
    if first.startswith("254") and len(first) >= 3:
        length = 13 if "".join(g.digits for g in groups[i:])[3:4] == "0" else 12
        return _read_to_length(text, groups, i, length, "254")
    if first[0] in "17" and len(first) in (3, 9):
        j, total = _take(groups, i, 9)
        if total == 9:
            phone = _kenyan_mobile("0" + _digits(groups, i, j))
            return (j, phone, None) if phone else (None, None, None)
        return None, None, None
    if len(first) >= 10:  # "255712345678", "447911123456": a number without its +
        return _problem_for(text, groups, i, i, first)
    return None, None, None


def _read_international(text: str, groups: list[_Span], i: int) -> tuple[int, str | None, str | None]:
    digits = ""
    for j in range(i, len(groups)):
        digits += groups[j].digits
        if len(digits) > _MAX_DIGITS:
            break
        number = _parse("+" + digits)
        if number is not None and phonenumbers.is_valid_number(number):
            if number.country_code != 254:
                return j, None, _foreign(text, groups, i, j, number.country_code)
            phone = _kenyan_mobile("+" + digits)
            return j, phone, None if phone else _problem_for(text, groups, i, j, digits)[2]
    j, _ = _take(groups, i, _MAX_DIGITS)
    return _problem_for(text, groups, i, j, _digits(groups, i, j))


def _read_to_length(text: str, groups: list[_Span], i: int, length: int, prefix: str
                    ) -> tuple[int | None, str | None, str | None]:
    j, total = _take(groups, i, length)
    digits = _digits(groups, i, j)
    if total == length:
        phone = _kenyan_mobile(digits)
        return j, phone, None if phone else _problem_for(text, groups, i, j, digits)[2]
    j, total = _take(groups, i, 13)
    if total >= 7:  # meant as a phone, with digits missing or extra ("07911 123456")
        return _problem_for(text, groups, i, j, _digits(groups, i, j))
    return None, None, None


def _take(groups: list[_Span], i: int, length: int) -> tuple[int, int]:
    """Take groups from i while the digits stay within `length`: (last group taken, digit count)."""
    total, j = 0, i
    for k in range(i, len(groups)):
        if total + len(groups[k].digits) > length and k > i:
            break
        total += len(groups[k].digits)
        j = k
        if total >= length:
            break
    return j, total


def _digits(groups: list[_Span], i: int, j: int) -> str:
    return "".join(g.digits for g in groups[i:j + 1])


def _parse(text: str):
    try:
        return phonenumbers.parse(text, "KE")
    except phonenumbers.NumberParseException:
        return None


def _kenyan_mobile(text: str) -> str | None:
    try:
        return display_phone(normalize_phone(text))
    except InvalidPhoneNumber:
        return None


def _written(text: str, groups: list[_Span], i: int, j: int) -> str:
    start = groups[i].start
    while start > 0 and text[start - 1] in "+(":
        start -= 1
    return text[start:groups[j].end].strip()


def _foreign(text: str, groups: list[_Span], i: int, j: int, country_code: int) -> str:
    region = phonenumbers.region_code_for_country_code(country_code)
    example = phonenumbers.example_number(region) if region else None
    name = country_name_for_number(example, "en") if example else ""
    where = f"a {name} number (+{country_code})" if name else f"a +{country_code} number"
    return (f"{_written(text, groups, i, j)} is {where}, not a Kenyan one. M-Pesa requests go to Kenyan "
            "mobile numbers only, like 0712345678 or +254712345678.")


def _problem_for(text: str, groups: list[_Span], i: int, j: int, digits: str) -> tuple[int, None, str]:
    written = _written(text, groups, i, j)
    plus = text[max(0, groups[i].start - 2):groups[i].start].strip().endswith("+")
    if not plus and not digits.startswith(("0", "254")):
        number = _parse("+" + digits)
        if number is not None and phonenumbers.is_valid_number(number) and number.country_code != 254:
            return j, None, _foreign(text, groups, i, j, number.country_code)
    if digits.startswith("0") and len(digits) != 10:
        return j, None, f"{written} has {len(digits)} digits; a Kenyan mobile number has 10, like 0712345678."
    number = _parse(("+" if plus else "") + digits)
    if number is not None and number.country_code == 254 and phonenumbers.is_valid_number(number):
        return j, None, (f"{written} is a landline, not a mobile number; M-Pesa needs a Kenyan mobile line, "
                         "like 0712345678.")
    return j, None, f"{written} is not a valid Kenyan mobile number; write it like 0712345678 or +254712345678."


def find_amount(text: str) -> tuple[int | None, str | None]:
    """Return (whole KES, why the amount cannot be used); (None, None) when there is none."""
    candidates: list[tuple[int, str, object]] = []  # (where, as written, value)
    taken: list[range] = []
    words = _word_numbers(text)
    for match in _DIGIT_AMOUNT.finditer(text):
        taken.append(range(*match.span()))
        if not (match["before"] or match["after"]) and (
                _NOT_MONEY_AFTER.match(text, match.end()) or _NOT_MONEY_BEFORE.search(text, 0, match.start())):
            continue
        if not match["mult"] and any(start <= match.start() < start + len(written) for start, written, _ in words):
            continue  # the "2" of "elfu 2" is part of the words' amount
        candidates.append((match.start(), match.group(0).strip(), _digit_value(match)))
    for start, written, value in words:
        if not any(start in span for span in taken):  # the "thao" of "2 thao" is already counted
            candidates.append((start, written, value))
    candidates.sort()
    if not candidates:
        return None, None
    chosen = candidates  # "10 or ksh 11": a currency mark on one does not make the other less meant
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
    """None for words that make no English number: "two fifty" (250 or 2.50?) is asked, never read as 52."""
    total = current = 0
    for word in words:
        below_hundred = current % 100
        if word in _UNITS:
            if below_hundred and not (below_hundred % 10 == 0 and below_hundred >= 20 and _UNITS[word] < 10):
                return None  # "two five", "fifty twelve"; "fifty two" is fine
            current += _UNITS[word]
        elif word in _TENS:
            if below_hundred:
                return None  # "two fifty", "twenty thirty"
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
    limit = 100 if multiplier == 100_000 else 1000
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
        if purpose and _is_amount_phrase(purpose):
            continue  # "for 3,000", "for 500 bob": the amount, not what it is for
        if purpose and not purpose.startswith("<"):
            return purpose, text[:marker.start()] + " " + text[end:], raw
    return "", text, ""


def _is_amount_phrase(text: str) -> bool:
    """True for "3,000", "ksh 500", "1.5k", "elfu mbili": nothing but an amount."""
    match = _DIGIT_AMOUNT.fullmatch(text.strip())
    if match:
        return True
    words = [m.group(0).lower() for m in _WORD.finditer(text)]
    return bool(words) and all(w in _NUMBER_WORDS or w in _CONNECTORS or w.isdigit() for w in words) \
        and bool(_word_numbers(text))


def _clean_purpose(raw: str) -> str:
    purpose = _FILLER_TAIL.sub("", raw.strip())
    purpose = purpose.strip(" \t.,;:!?-'\"")
    purpose = _FILLER_TAIL.sub("", purpose).strip(" \t.,;:!?-'\"")
    return purpose[:100]


def _amount_at_end_of_purpose(raw: str, context: str) -> tuple[int | None, str | None, str]:
    """ "for lunch 500 bob": the amount came after the purpose."""
    for match in _DIGIT_AMOUNT.finditer(raw):
        if raw[match.end():].strip(" .,!?") == "" or match["before"] or match["after"]:
            start = match.start()
            while True:  # "for lunch thao 1", "for rent elfu 2": the words before the digits count too
                word = re.search(r"([a-z]+)\s*$", raw[:start], re.IGNORECASE)
                if not word or word.group(1).lower() not in _NUMBER_WORDS | _CONNECTORS:
                    break
                start = word.start(1)
            amount, problem = find_amount(raw[start:match.end()])
            trimmed = _clean_purpose(raw[:start] + " " + raw[match.end():])
            return amount, problem, trimmed
    return None, None, context
