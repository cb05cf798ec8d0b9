"""Shadow routing: a stored policy's decisions computed beside the served ones, off the response
path (``work``), started and stopped (``control``), and compared with the served policy
(``report``)."""
