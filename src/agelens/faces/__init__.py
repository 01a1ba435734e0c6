"""Face detection, landmarks and alignment (mediapipe FaceDetection + 478-point FaceMesh)."""

from .align import TEMPLATE_KEYPOINTS, align_face, keypoints_from_mesh
from .detect import Face, FaceAnalyzer

__all__ = ["Face", "FaceAnalyzer", "TEMPLATE_KEYPOINTS", "align_face", "keypoints_from_mesh"]
