"""Build script for the camera_pose_ros ament_python package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "camera_pose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks", "benchmarks.*"]),
    package_data={f"{PACKAGE}.dashboard": ["static/*"]},  # the dashboard's pages and scripts
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="camera_pose_ros maintainers",
    maintainer_email="maintainers@camera-pose-ros.invalid",
    description="Single-image camera relocalization for ROS 2 (PoseNet/MapNet + pycolmap).",
    license="Apache-2.0",
    tests_require=["pytest"],
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "camera-pose = camera_pose_ros.cli:main",
            "relocalization_node = camera_pose_ros.ros.relocalization_node:main",
            "recorder_node = camera_pose_ros.ros.recorder_node:main",
            "bag_player = camera_pose_ros.ros.bag_player:main",
            "dashboard_node = camera_pose_ros.ros.dashboard_node:main",
        ],
    },
)
