import socket

import pytest


def test_network_access_beyond_loopback_fails_the_test(offline_guard):
    with pytest.raises(offline_guard):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
