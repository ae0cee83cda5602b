"""The director: which release each device must run now, and its signed per-device metadata.

assignment.py holds the rule (a device's oldest open deployment), checkin.py the unchanged
check-in in one statement, metadata.py the TUF signing, files.py the stored metadata of each
device, device_api.py the device listener's route."""
