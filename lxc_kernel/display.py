"""Pure: rich output frames. The ``jdisplay`` helper script for the container, and the parser that finds
its frames in a cell's stdout and turns them into Jupyter ``display_data`` content.

A frame is plain printable text, so it survives the terminal and ANSI cleaning::

    <<lxck-display:TOKEN:BEGIN MIME ENCODING ID UPDATE>>
    ...payload (base64 in lines, or hex from od when the container has no base64)...
    <<lxck-display:TOKEN:END>>

``TOKEN`` is fresh for every cell and reaches the cell only through the ``LXCK_DISPLAY`` variable, so
text that merely looks like a frame (a log that was ``cat``-ed, a frame saved by an earlier cell) has
the wrong token and stays text. Only a frame with this cell's token is rendered.
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
MAX_FRAME = 32 << 20  # characters of payload; a bigger frame is dropped with a message

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


@dataclass
class DisplayParser:
    """Incrementally split a cell's stdout text into plain text and :class:`DisplayFrame` items.

    ``feed`` returns a list of ``str`` (text to show) and ``DisplayFrame`` items in order. Only a
    suffix that could still grow into this cell's marker is held back, so ordinary output is never
    delayed by more than a marker's length.
    """

    token: str
    _begin: str = field(init=False)
    _end: str = field(init=False)
    _buf: str = field(default="", init=False)
    _frame: tuple[str, str, str | None, bool] | None = field(default=None, init=False)
    _payload: list[str] = field(default_factory=list, init=False)
    _size: int = field(default=0, init=False)
    _skip_newline: bool = field(default=False, init=False)  # the newline after an END marker
    errors: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._begin = f"{PREFIX}{self.token}:"
        self._end = f"{PREFIX}{self.token}:END>>"

    def feed(self, text: str) -> list[str | DisplayFrame]:
        buf = self._buf + text if self._buf else text
        self._buf = ""
        out: list[str | DisplayFrame] = []
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
            buf = rest[match.end() :]
        return out

    def flush(self) -> list[str | DisplayFrame]:
        """End of the cell: an unterminated frame is reported, held text is released."""
        out: list[str | DisplayFrame] = []
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
        if self._size <= MAX_FRAME:
            self._payload.append(text)

    def _close(self) -> DisplayFrame | None:
        assert self._frame is not None
        mime, enc, ident, update = self._frame
        self._frame = None
        payload, self._payload = "".join(self._payload), []
        if self._size > MAX_FRAME:
            self.errors.append(f"{HELPER_NAME}: {mime} output of {self._size} characters is over the "
                               f"{MAX_FRAME >> 20} MB limit; nothing shown")
            return None
        try:
            data = _decode(payload, enc)
        except ValueError as exc:
            self.errors.append(f"{HELPER_NAME}: could not decode the {mime} output: {exc}")
            return None
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


def bundle(frame: DisplayFrame) -> tuple[dict[str, Any], str | None]:
    """The ``data`` dict of a display message for ``frame``, or (empty, error message)."""
    mime, raw = frame.mime, frame.payload
    size = f"{len(raw)} bytes"
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
