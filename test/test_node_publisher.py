"""ovs_ros.node.publisher.ResultPublisher alone (no ROS): hand-over, newest wins, drain on stop, errors."""
import threading
import time

from ovs_ros.node.publisher import ResultPublisher


def _publisher(delay_s: float = 0.0, fail_on=None):
    published, dropped, errors = [], [], []
    gate = threading.Event()
    gate.set()

    def publish(job):
        gate.wait(5.0)
        time.sleep(delay_s)
        if job == fail_on:
            raise ValueError("bad frame")
        published.append(job)

    pub = ResultPublisher(publish, lambda: dropped.append(1), errors.append)
    return pub, published, dropped, errors, gate


def test_newest_wins_while_a_publish_is_in_flight_and_stop_drains():
    pub, published, dropped, errors, gate = _publisher()
    gate.clear()  # the first job blocks in publish
    assert pub.submit(1)
    time.sleep(0.1)
    assert pub.submit(2) and pub.submit(3)  # 2 is replaced by 3 before it went out
    gate.set()
    assert pub.stop(timeout=5.0)
    assert published == [1, 3] and len(dropped) == 1 and errors == []
    assert not pub.submit(4)  # stopped: not taken, never published
    time.sleep(0.05)
    assert published == [1, 3]


def test_stop_publishes_the_pending_result_then_nothing():
    pub, published, dropped, _, gate = _publisher(delay_s=0.05)
    for job in range(3):
        pub.submit(job)
    assert pub.stop(timeout=5.0)
    done = list(published)
    assert done and done[-1] == 2 and done == sorted(done)  # in submission order, the newest last
    time.sleep(0.1)
    assert published == done and len(done) + len(dropped) == 3


def test_an_error_in_one_publish_does_not_end_the_thread():
    pub, published, _, errors, _ = _publisher(fail_on=1)
    pub.submit(1)
    assert pub.idle(5.0)
    pub.submit(2)
    assert pub.idle(5.0)
    assert published == [2] and len(errors) == 1 and isinstance(errors[0], ValueError)
    assert pub.stop(timeout=5.0)
