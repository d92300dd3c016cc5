"""ros2_opentrack: online open-vocabulary 3D instance tracking from RGB-D + pose (OpenTrack3D, streaming).

The core (everything outside ``ros2_opentrack.ros``) imports no ROS module.
"""

# The ROS build generates the message modules (ros2_opentrack.msg) into the install space's copy of this
# package; extend_path lets them join this package when the sources are imported from elsewhere (tests, -e).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
