print("aimesh")
