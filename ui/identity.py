"""Who is using this browser tab: the owner of the runs it starts (see mlm_core/training/ownership.py).

``current_owner()`` takes the first of:

1. the header an authenticating proxy sets (``server_policy().user_header``), when the operator named
   one and the request carries it: ``user:<its value>``;
2. Streamlit's own sign-in (an ``[auth]`` section in secrets.toml), when signed in: ``user:<email>``;
3. this browser: ``browser:`` and the first 16 hex digits of the SHA-256 of the token in Streamlit's
   ``_streamlit_xsrf`` cookie. The cookie outlives page reloads and is shared by the browser's tabs,
   and nobody else can read it, so a reload keeps the runs one's own; the cookie itself is never
   stored. Without it (XSRF protection switched off, AppTest) a random id kept for the session.

Example: ``current_owner()`` → ``"browser:5d41402abc4b2a76"`` in a browser nobody signed in from.
"""

from __future__ import annotations

import hashlib
import uuid

import streamlit as st

from mlm_core.policy import server_policy
from mlm_core.training.ownership import BROWSER_PREFIX, USER_PREFIX

XSRF_COOKIE = "_streamlit_xsrf"
SESSION_OWNER_KEY = "masklab-owner"  # no widget has this key, so no browser event can set it
OWNER_ID_HEX = 16  # 64 bits of the hash: no two browsers of a class (or of a year of classes) collide


def current_owner() -> str:
    """The owner id of this session (see the module docstring for the order)."""
    header = server_policy().user_header
    if header:
        name = st.context.headers.get(header)
        if isinstance(name, str) and name.strip():  # AppTest's stand-in client gives no text here
            return USER_PREFIX + name.strip()
    email = _signed_in_email()
    if email:
        return USER_PREFIX + email
    cookie = st.context.cookies.get(XSRF_COOKIE)
    if isinstance(cookie, str) and cookie:  # AppTest's stand-in client gives a mock, not text
        return browser_owner(cookie)
    if SESSION_OWNER_KEY not in st.session_state:
        st.session_state[SESSION_OWNER_KEY] = BROWSER_PREFIX + uuid.uuid4().hex[:OWNER_ID_HEX]
    return st.session_state[SESSION_OWNER_KEY]


def browser_owner(xsrf_cookie: str) -> str:
    """The owner id of the browser holding ``xsrf_cookie`` (the value of its ``_streamlit_xsrf`` cookie)."""
    return BROWSER_PREFIX + hashlib.sha256(_xsrf_token(xsrf_cookie)).hexdigest()[:OWNER_ID_HEX]


def _signed_in_email() -> str | None:
    """The signed-in user's e-mail when Streamlit's sign-in is configured and used, else None."""
    try:
        user = st.user
        if not user.get("is_logged_in"):  # absent when sign-in is not configured
            return None
        email = user.get("email")
    except Exception:  # noqa: BLE001 - no session context or no sign-in support: fall back to the browser
        return None
    if email is None:
        return None
    return str(email).strip() or None


def _xsrf_token(cookie: str) -> bytes:
    """The secret in an XSRF cookie. Tornado writes ``2|mask|token XOR mask|time`` and may write the same
    token with a new mask, so the token is unmasked first; any other form is used as it is."""
    parts = cookie.split("|")
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
        except ValueError:
            return cookie.encode()
        if mask:
            return bytes(byte ^ mask[i % len(mask)] for i, byte in enumerate(masked))
    return cookie.encode()
