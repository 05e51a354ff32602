"""What results look like, without Streamlit: figures, escaped HTML, standalone reports.

* ``charts``: Plotly/Altair figures built from mlm_core results (token axes by position, labels escaped);
* ``html``: token strips and chips, the one place HTML is built from tokens (everything escaped);
* ``lines``: the attention line view (BertViz style: two token columns joined by weighted lines);
* ``presenter``: any figure restyled for a projector (text at least 20 px, dark);
* ``words``: word pieces merged into words for display, shared by the pages and the CLI;
* ``reports``: standalone offline HTML reports of a view (Explore, Batch analysis, Compare, Runs);
* ``spreadsheet``: CSV downloads whose formula-like text cells (``=...``, ``+``, ``-``, ``@``) stay text.
"""
