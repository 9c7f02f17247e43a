"""Model code (torch and numpy only: no ROS, no training): the Mask2Former mask generator (`mask2former`) and the
CLIP classifier (`clip`)."""
