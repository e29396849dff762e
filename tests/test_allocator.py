from worker.allocator import limit_allocator_growth


def test_glibc_accepts_the_allocator_limits():
    assert limit_allocator_growth() is True
