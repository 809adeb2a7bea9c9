from twisted.application.service import ServiceMaker

pcciMaster = ServiceMaker(
    "pcci-master",
    "pcci.master.tap",
    "Run a pcci master: REST API and worker port.",
    "pcci-master",
)
