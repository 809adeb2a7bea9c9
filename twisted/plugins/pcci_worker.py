from twisted.application.service import ServiceMaker

pcciWorker = ServiceMaker(
    "pcci-worker",
    "pcci.worker.tap",
    "Run a pcci worker that runs the master's commands.",
    "pcci-worker",
)
