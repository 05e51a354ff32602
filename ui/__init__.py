"""Streamlit helpers shared by the pages (widgets and layouts used in more than one place)."""
