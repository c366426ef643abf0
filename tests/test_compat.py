"""Fails loudly when SAELens moves an internal this plugin relies on (see _compat.py)."""

from sae_lens_tokenized._compat import check_seams


def test_saelens_seams_are_where_we_expect_them():
    assert check_seams() == []
