"""The inbox between the consumer and the handlers: every waiting scan before any catalog
event, whatever arrived first, in batches of their own size (DESIGN: a 10 000-product import
must not delay a scan; the same through a real broker: test_reliability.py)."""

from __future__ import annotations

from kombu import Connection, Producer, Queue

from worker.amqp.inbox import Inbox


def test_waiting_scans_go_first_in_batches_of_their_own_size():
    inbox = Inbox(scan_batch=2, catalog_batch=3)
    inbox.catalog.extend(["c1", "c2", "c3", "c4"])  # a bulk import arrived first
    inbox.scans.extend(["s1", "s2", "s3"])
    taken = []
    while inbox.pending():
        batch = inbox.next_batch()
        taken.append((batch.kind, batch.messages))
    assert taken == [
        ("scans", ["s1", "s2"]),
        ("scans", ["s3"]),
        ("catalog", ["c1", "c2", "c3"]),
        ("catalog", ["c4"]),
    ]


def test_a_scan_arriving_during_an_import_goes_before_the_rest_of_it():
    inbox = Inbox(scan_batch=4, catalog_batch=2)
    inbox.catalog.extend(["c1", "c2", "c3"])
    assert inbox.next_batch().messages == ["c1", "c2"]
    inbox.scans.append("s1")
    first, then = inbox.next_batch(), inbox.next_batch()
    assert (first.kind, first.messages) == ("scans", ["s1"])
    assert (then.kind, then.messages) == ("catalog", ["c3"])


def test_catalog_work_taken_out_or_forgotten_leaves_nothing_behind():
    inbox = Inbox(scan_batch=2, catalog_batch=2)
    inbox.catalog.extend(["c1", "c2"])
    inbox.scans.append("s1")
    assert inbox.take_catalog() == ["c1", "c2"]
    assert list(inbox.scans) == ["s1"] and not inbox.catalog
    inbox.forget()
    assert not inbox.pending()


def test_on_the_way_out_what_was_not_handled_goes_back_to_the_broker():
    queue = Queue("jewelmatch.test-inbox", durable=False)
    with Connection("memory://") as connection:
        channel = connection.channel()
        bound = queue(channel)
        bound.declare()
        bound.purge()
        for n in range(3):
            Producer(channel).publish(f"m{n}".encode(), routing_key=queue.name)
        received = [bound.get(no_ack=False) for _ in range(3)]
        received[0].ack()  # handled
        inbox = Inbox(scan_batch=4, catalog_batch=4)
        inbox.scans.extend(received[:2])
        inbox.catalog.append(received[2])
        inbox.give_back()
        assert not inbox.pending()
        back = []
        while (message := bound.get(no_ack=True)) is not None:
            back.append(message.body)
        assert sorted(back) == [b"m1", b"m2"]
