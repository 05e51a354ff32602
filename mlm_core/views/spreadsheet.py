"""CSV that opens safely in a spreadsheet: a text cell that starts like a formula stays text.

Excel, LibreOffice Calc and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a
formula, so a sentence, token or model guess such as ``=HYPERLINK("http://evil", "click")`` or
``=cmd|' /C calc'!A0`` in a downloaded CSV would act when the file is opened. OWASP's rule for CSV
injection: put a single quote before such a text cell (and before one starting with a tab, a
carriage return or a line feed, which some spreadsheets skip before looking for ``=``); a spreadsheet then shows
the text as typed, quote first. Numbers stay numbers: a numeric column's ``-0.5`` is written as it
is, and so is a text cell that is only a number (``-3``), which a spreadsheet reads as that number.

Every CSV that MaskLab writes for people goes through ``spreadsheet_csv`` (the Batch page's and
``evaluate --out``'s rows, the Explore page's chart numbers). The evaluation cache's own CSV files
are not for people and keep their cells unchanged.

Example::

    safe_cell("=1+2")   # "'=1+2"
    safe_cell("-0.5")   # "-0.5": a number
    safe_cell(-0.5)     # -0.5
"""

from __future__ import annotations

import re

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
_PLAIN_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


def safe_cell(value):
    """``value`` as a spreadsheet should see it: a text that starts like a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not re.fullmatch(_PLAIN_NUMBER, value):
        return "'" + value
    return value


def _safe_values(values: pd.Series) -> pd.Series:
    """``values`` with ``safe_cell`` applied to its text cells; a numeric column is returned as it is."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values
    try:  # vectorised: a million token rows take a second, not a minute
        risky = values.str.startswith(FORMULA_STARTS, na=False) & ~values.str.fullmatch(_PLAIN_NUMBER, na=False)
    except AttributeError:  # cells that are not all text (.str refuses them): one at a time
        return values.map(safe_cell)
    if not risky.any():
        return values
    return values.where(~risky, "'" + values.astype(str))


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every text cell, column name and index label passed through ``safe_cell``."""
    safe = frame.copy(deep=False)
    for position in range(safe.shape[1]):
        safe.isetitem(position, _safe_values(safe.iloc[:, position]))
    safe.columns = [safe_cell(name) for name in safe.columns] if safe.columns.nlevels == 1 else safe.columns
    if safe.index.nlevels == 1:
        safe.index = pd.Index(_safe_values(pd.Series(safe.index, dtype=safe.index.dtype)), name=safe.index.name)
    return safe


def spreadsheet_csv(frame: pd.DataFrame, index: bool = True, header: bool = True) -> str:
    """``frame.to_csv`` with formula-like text cells neutralised (see the module docstring)."""
    return safe_frame(frame).to_csv(index=index, header=header)
