"""Model code (torch and numpy only: no ROS, no training): the Mask2Former mask generator (`mask2former`), the FC-CLIP
mask generator (`fcclip`) and the CLIP classifier (`clip`)."""
