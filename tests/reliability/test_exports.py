import medurwkv_net.reliability as rel


def test_every_exported_name_resolves():
    for name in rel.__all__:
        assert getattr(rel, name) is not None, name
    assert set(dir(rel)) >= set(rel.__all__)
