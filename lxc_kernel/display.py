"""Pure: rich output frames. The ``jdisplay`` helper script for the container, and the parser that finds
its frames in a cell's stdout and turns them into Jupyter ``display_data`` content.

A frame is plain printable text, so it survives the terminal and ANSI cleaning::

    <<lxck-display:TOKEN:BEGIN MIME ENCODING ID UPDATE>>
    ...payload (base64 in lines, or hex from od when the container has no base64)...
    <<lxck-display:TOKEN:END>>

``TOKEN`` is fresh for every cell and reaches the cell only through the ``LXCK_DISPLAY`` variable, so
text that merely looks like a frame (a log that was ``cat``-ed, a frame saved by an earlier cell) has
the wrong token and stays text. Only a frame with this cell's token is rendered.

What reaches the frontend depends on the kernel's ``display`` policy (:func:`bundle`): ``all`` sends
every frame as it is; ``safe`` sends images, JSON, plain text, Markdown that cannot carry markup, and
HTML cleaned by ammonia (the ``nh3`` bindings: no scripts, event handlers or ``javascript:`` URLs);
``off`` sends none. A frame is never held past its cap (:attr:`DisplayParser.cap`, at most
:data:`MAX_FRAME`): the rest of a bigger one is only counted, so a flood of frames costs no memory.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

HELPER_NAME = "jdisplay"
ENV_VAR = "LXCK_DISPLAY"
PREFIX = "<<lxck-display:"
# Bytes of one frame's content; a bigger frame is dropped with a message. One 32 MB frame cost the kernel
# about 150 MB (the payload, its decoded bytes, the JSON message and zmq's copy all exist at once).
MAX_FRAME = 10 << 20
POLICIES = ("all", "safe", "off")
# What `safe` sends: types frontends render without running anything (SVG and HTML are rewritten).
SAFE_TYPES = ("image/png", "image/jpeg", "image/gif", "application/json", "text/plain", "text/markdown",
              "text/html", "image/svg+xml")

# MIME types whose payload is text in the notebook (the rest, images, stay base64 as Jupyter wants).
TEXT_TYPES = ("text/html", "text/markdown", "text/plain", "image/svg+xml", "text/latex")
KNOWN_TYPES = (*TEXT_TYPES, "image/png", "image/jpeg", "image/gif", "application/json")

_BEGIN_RE = re.compile(r"BEGIN ([a-z]+/[A-Za-z0-9.+-]+) (b64|hex) ([A-Za-z0-9_.-]{1,64}|-) ([01])>>\n?")
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# POSIX sh for busybox ash and bash alike: no arrays, no [[ ]], no local.
HELPER_SCRIPT = r"""#!/bin/sh
# jdisplay: show a file (or stdin) as rich output in the notebook. Installed by lxc-kernel.
usage() {
    cat <<'EOF'
usage: jdisplay [--png|--jpeg|--gif|--svg|--html|--markdown|--json|--text|--mime TYPE] [--id ID [--update]] [FILE|-]

Shows FILE (or stdin) as rich output in the notebook. The type comes from the option, else from
FILE's extension (.png .jpg .jpeg .gif .svg .html .htm .md .json .txt), else text/plain.
--id ID gives the output a name; showing the same ID again updates that output in place.
--update only updates an existing output with that ID (never creates one).
EOF
}
mime= id= update=0 file=
while [ $# -gt 0 ]; do
    case $1 in
        --png) mime=image/png ;;
        --jpeg|--jpg) mime=image/jpeg ;;
        --gif) mime=image/gif ;;
        --svg) mime=image/svg+xml ;;
        --html) mime=text/html ;;
        --markdown|--md) mime=text/markdown ;;
        --json) mime=application/json ;;
        --text) mime=text/plain ;;
        --mime) [ $# -ge 2 ] || { usage >&2; exit 2; }; mime=$2; shift ;;
        --mime=*) mime=${1#--mime=} ;;
        --id) [ $# -ge 2 ] || { usage >&2; exit 2; }; id=$2; shift ;;
        --id=*) id=${1#--id=} ;;
        --update) update=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; file=${1:-}; break ;;
        -) file=- ;;
        -*) echo "jdisplay: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) file=$1 ;;
    esac
    shift
done
if [ -z "${LXCK_DISPLAY:-}" ]; then
    echo "jdisplay: not running in an lxc-kernel cell (LXCK_DISPLAY is unset)" >&2
    exit 1
fi
[ -n "$file" ] || file=-
if [ -z "$mime" ]; then
    case $file in
        *.png|*.PNG) mime=image/png ;;
        *.jpg|*.jpeg|*.JPG|*.JPEG) mime=image/jpeg ;;
        *.gif|*.GIF) mime=image/gif ;;
        *.svg|*.SVG) mime=image/svg+xml ;;
        *.html|*.htm) mime=text/html ;;
        *.md|*.markdown) mime=text/markdown ;;
        *.json) mime=application/json ;;
        *) mime=text/plain ;;
    esac
fi
case $mime in
    */*) ;;
    *) echo "jdisplay: bad MIME type '$mime'" >&2; exit 2 ;;
esac
case $id in
    *[!A-Za-z0-9_.-]*) echo "jdisplay: --id takes letters, digits, '.', '_' and '-'" >&2; exit 2 ;;
esac
if [ "$update" = 1 ] && [ -z "$id" ]; then
    echo "jdisplay: --update needs --id" >&2; exit 2
fi
if [ "$file" != - ] && [ ! -r "$file" ]; then
    echo "jdisplay: cannot read '$file'" >&2; exit 1
fi
if command -v base64 >/dev/null 2>&1; then enc=b64; else enc=hex; fi
encode() {
    if [ $enc = b64 ]; then base64; else od -An -v -tx1; fi
}
printf '<<lxck-display:%s:BEGIN %s %s %s %s>>\n' "$LXCK_DISPLAY" "$mime" "$enc" "${id:--}" "$update"
if [ "$file" = - ]; then encode; else encode < "$file"; fi
status=$?
printf '<<lxck-display:%s:END>>\n' "$LXCK_DISPLAY"
exit $status
"""


def new_display_token() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True)
class DisplayFrame:
    mime: str
    payload: bytes
    display_id: str | None
    update: bool


@dataclass(frozen=True)
class OversizeFrame:
    """A frame bigger than the cap it started under: its content was counted, not kept."""

    mime: str
    size: int  # bytes of content (estimated from the encoded length when it was not decoded)
    cap: int


def encoded_cap(enc: str, cap: int) -> int:
    """The most payload characters ``cap`` bytes can take: base64 lines carry 57 bytes in 77 characters,
    ``od -An -v -tx1`` lines 16 bytes in 49."""
    return cap * 77 // 57 + 80 if enc == "b64" else cap * 49 // 16 + 64


@dataclass
class DisplayParser:
    """Incrementally split a cell's stdout text into plain text and :class:`DisplayFrame` items.

    ``feed`` returns a list of ``str`` (text to show), ``DisplayFrame`` and ``OversizeFrame`` items in
    order. Only a suffix that could still grow into this cell's marker is held back, so ordinary output
    is never delayed by more than a marker's length. ``cap`` (bytes) is read when a frame begins: the
    caller lowers it to what the output budget has left, or to 0 when nothing is shown.
    """

    token: str
    cap: int = MAX_FRAME
    _begin: str = field(init=False)
    _end: str = field(init=False)
    _buf: str = field(default="", init=False)
    _frame: tuple[str, str, str | None, bool] | None = field(default=None, init=False)
    _payload: list[str] = field(default_factory=list, init=False)
    _size: int = field(default=0, init=False)
    _frame_cap: int = field(default=0, init=False)
    _keep: int = field(default=0, init=False)  # payload characters this frame may hold
    _skip_newline: bool = field(default=False, init=False)  # the newline after an END marker
    errors: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._begin = f"{PREFIX}{self.token}:"
        self._end = f"{PREFIX}{self.token}:END>>"

    def feed(self, text: str) -> list[str | DisplayFrame | OversizeFrame]:
        buf = self._buf + text if self._buf else text
        self._buf = ""
        out: list[str | DisplayFrame | OversizeFrame] = []
        while buf:
            if self._skip_newline:
                self._skip_newline = False
                if buf.startswith("\n"):
                    buf = buf[1:]
                    continue
            if self._frame is not None:
                idx = buf.find(self._end)
                if idx < 0:
                    keep = _partial_suffix(buf, self._end)
                    self._add_payload(buf[: len(buf) - keep])
                    self._buf = buf[len(buf) - keep :]
                    break
                self._add_payload(buf[:idx])
                buf = buf[idx + len(self._end) :]
                self._skip_newline = True
                frame = self._close()
                if frame is not None:
                    out.append(frame)
                continue
            idx = buf.find(self._begin)
            if idx < 0:
                keep = _partial_suffix(buf, self._begin)
                if buf[: len(buf) - keep]:
                    out.append(buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                break
            if idx:
                out.append(buf[:idx])
            rest = buf[idx + len(self._begin) :]
            match = _BEGIN_RE.match(rest)
            if match is None:
                if len(rest) < 200 and "\n" not in rest:
                    self._buf = buf[idx:]  # the header is still arriving
                    break
                out.append(buf[idx : idx + len(self._begin)])  # not a header after all: text
                buf = rest
                continue
            mime, enc, ident, update = match.groups()
            self._frame = (mime, enc, None if ident == "-" else ident, update == "1")
            self._payload, self._size = [], 0
            self._frame_cap = max(0, min(self.cap, MAX_FRAME))
            self._keep = encoded_cap(enc, self._frame_cap)
            buf = rest[match.end() :]
        return out

    def flush(self) -> list[str | DisplayFrame | OversizeFrame]:
        """End of the cell: an unterminated frame is reported, held text is released."""
        out: list[str | DisplayFrame | OversizeFrame] = []
        if self._frame is not None:
            self.errors.append(f"{HELPER_NAME}: the output ended inside a display frame; nothing shown")
            self._frame = None
            self._payload = []
        if self._buf:
            out.append(self._buf)
            self._buf = ""
        return out

    def _add_payload(self, text: str) -> None:
        if not text:
            return
        self._size += len(text)
        if self._size <= self._keep:
            self._payload.append(text)
        elif self._payload:
            self._payload = []  # over the cap: from here on only counted

    def _close(self) -> DisplayFrame | OversizeFrame | None:
        assert self._frame is not None
        mime, enc, ident, update = self._frame
        self._frame = None
        payload, self._payload = "".join(self._payload), []
        if self._size > self._keep:
            ratio = (57, 77) if enc == "b64" else (16, 49)
            return OversizeFrame(mime, self._size * ratio[0] // ratio[1], self._frame_cap)
        try:
            data = _decode(payload, enc)
        except ValueError as exc:
            self.errors.append(f"{HELPER_NAME}: could not decode the {mime} output: {exc}")
            return None
        if len(data) > self._frame_cap:
            return OversizeFrame(mime, len(data), self._frame_cap)
        return DisplayFrame(mime, data, ident, update)


def _decode(payload: str, enc: str) -> bytes:
    compact = "".join(payload.split())
    if enc == "hex":
        return bytes.fromhex(compact)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    start = max(0, len(buf) - len(marker) + 1)
    i = buf.find("<", start)
    while i >= 0:
        if marker.startswith(buf[i:]):
            return len(buf) - i
        i = buf.find("<", i + 1)
    return 0


def bundle(frame: DisplayFrame, policy: str = "all") -> tuple[dict[str, Any], str | None]:
    """The ``data`` dict of a display message for ``frame`` under ``policy``, and a message for stderr:
    (empty, why) when nothing is shown, or (data, a note) when it is shown differently."""
    mime, raw = frame.mime, frame.payload
    size = f"{len(raw)} bytes"
    if policy == "safe":
        if mime not in SAFE_TYPES:
            return {}, (f"{HELPER_NAME}: {mime} is not shown by this kernel (display=safe shows images, JSON, "
                        "Markdown, HTML without scripts, and plain text)")
        if mime == "text/html":
            return {mime: sanitize_html(raw.decode("utf-8", "replace")), "text/plain": f"<{mime}, {size}>"}, None
        if mime == "image/svg+xml":
            return {"text/html": svg_as_image(raw), "text/plain": f"<{mime}, {size}>"}, None
        if mime == "text/markdown":
            text = raw.decode("utf-8", "replace")
            if not inert_markdown(text):
                return {"text/plain": text}, (f"{HELPER_NAME}: Markdown with HTML or links is shown as text "
                                              "by this kernel (display=safe)")
    if mime == "application/json":
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return {}, f"{HELPER_NAME}: not valid JSON: {exc}"
        return {mime: value, "text/plain": json.dumps(value, indent=1)[:2000]}, None
    if mime in TEXT_TYPES or mime.startswith("text/"):
        text = raw.decode("utf-8", "replace")
        data: dict[str, Any] = {mime: text}
        if mime != "text/plain":
            data["text/plain"] = text if mime == "text/markdown" else f"<{mime}, {size}>"
        return data, None
    return {mime: base64.b64encode(raw).decode("ascii"), "text/plain": f"<{mime}, {size}>"}, None


def sanitize_html(html: str) -> str:
    """HTML without scripts, styles, event handlers, forms, frames or non-web URLs (ammonia's allow-list,
    through nh3). Links get ``rel="noopener noreferrer"``."""
    import nh3  # only `safe` kernels need it

    return nh3.clean(html)


def svg_as_image(raw: bytes) -> str:
    """SVG can carry scripts (``<script>``, ``onload``, ``<foreignObject>``), and ammonia does not clean
    SVG. Sent as an ``<img>`` of a data URL, it is drawn but never run: browsers load an image-SVG
    without scripts or external resources. The raw SVG is not sent, so a frontend that would inline
    ``image/svg+xml`` never sees it."""
    return f'<img src="data:image/svg+xml;base64,{base64.b64encode(raw).decode("ascii")}" alt="SVG image">'


def inert_markdown(text: str) -> bool:
    """Markdown that no renderer can turn into active content: no raw HTML or autolinks (both need
    ``<``), no link or reference destinations (``](``, ``]:``, where a ``javascript:`` URL would go), no
    MathJax ``\\href``. Frontends render Markdown output as trusted HTML, and this kernel has no Markdown
    parser to clean the result with, so anything else is shown as its source text."""
    return not any(mark in text for mark in ("<", "](", "]:", "\\href", "\\url"))
