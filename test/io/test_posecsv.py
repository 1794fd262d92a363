"""camera_pose_ros.io.posecsv: stamps exact to the nanosecond, bad ones a named error."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.errors import FormatError, InputDataError
from camera_pose_ros.io.posecsv import (
    PoseTable,
    format_stamp,
    parse_stamp,
    read_poses,
    write_poses,
)


@pytest.mark.parametrize(("text", "ns"), [
    ("1700000000.123456789", 1_700_000_000_123_456_789),
    ("  12.5 ", 12_500_000_000),
    ("-0.000000001", -1),
    ("1e-3", 1_000_000),
])
def test_stamps_parse_to_exact_nanoseconds_and_back(text, ns):
    assert parse_stamp(text) == ns
    assert parse_stamp(format_stamp(ns)) == ns


@pytest.mark.parametrize(("text", "words"), [
    ("noon", "not a decimal number"),
    ("1e", "not a number"),
    ("nan", "not a time"),
    ("-inf", "not a time"),
    ("1e300", "not a time"),
    ("99999999999", "beyond int64"),
])
def test_a_stamp_that_is_no_time_is_a_format_error(text, words):
    with pytest.raises(FormatError, match=words):
        parse_stamp(text)


def test_a_bad_stamp_in_a_pose_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "poses.csv"
    path.write_text("stamp,x,y,z,qw,qx,qy,qz\n1.0,0,0,0,1,0,0,0\nlater,0,0,0,1,0,0,0\n")
    with pytest.raises(InputDataError, match=r"poses\.csv:3: unparsable number \(stamp 'later'"):
        read_poses(path)


def test_pose_csv_round_trip_keeps_nanoseconds(tmp_path):
    stamps = np.array([1_700_000_000_123_456_789, 1_700_000_000_223_456_789])
    t = PoseTable(stamps, np.array([[1.0, 2.0, 3.0], [4, 5, 6]]),
                  np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), None, {"cov_xx": ["0.1", "0.2"]})
    write_poses(tmp_path / "p.csv", t)
    back = read_poses(tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines()[1].startswith("1700000000.123456789,")
    assert np.array_equal(back.stamps_ns, stamps)
    assert back.extra == {"cov_xx": ["0.1", "0.2"]}
