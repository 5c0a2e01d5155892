# Test image for the fork and thread-exit tests (make docker-test builds and runs it).
#
# The engine here has no base images and no registry, so the image holds only the static test
# binaries that `make docker-test` builds into build/docker (the build context). Run it with
# `docker run --init` so that PID 1 reaps the children the fork tests leave behind.
FROM scratch
COPY . /
ENV TMPDIR=/tmp
ENTRYPOINT []
CMD ["/ctest"]
