"""Browser tests: a real Chromium (Debian package) against a running Streamlit server."""
