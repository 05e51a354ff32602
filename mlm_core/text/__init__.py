"""Text before it meets a model: tokens with their categories, user corpora, personal-data detection.

* ``tokens``: ``tokenize`` (ids, character offsets, word ids, category: stopword/punctuation/number/content);
* ``corpus``: ``read_corpus`` for txt, CSV/TSV and JSONL uploads, validated line by line;
* ``privacy``: ``PrivacyMasking``, e-mails, URLs, phone numbers and other personal data replaced in the raw text.
"""
