# The index image of one index generation: the fanout image (FROM scratch, the static
# /fanout, uid 65532) plus the output of `fanout index` under /index-src. The leaf
# pods' init container runs its /fanout as `fanout deploy copy-shard`, which copies
# index.json and the pod's own shard-<i>/ into the pod's emptyDir (docs/kubernetes.md).
# Nothing is pulled: the base is the image deploy/build-image built on this machine.
#
# Build it from the folder `fanout index --out DIR` wrote (the build context is DIR),
# tagged with something that names the generation:
#
#   deploy/build-image
#   fanout index --input corpus.jsonl.gz --shards 8 --out /tmp/index-g2
#   docker build -f deploy/kubernetes/images/index.Dockerfile -t fanout/index:g2 /tmp/index-g2
#
# FANOUT_IMAGE names another fanout image (it must be the version the leaves run, or
# at least one whose `deploy copy-shard` reads this index).
ARG FANOUT_IMAGE=fanout/fanout:0.1.0
FROM ${FANOUT_IMAGE}
COPY --chown=65532:65532 . /index-src/
# Refuse to build an image without a finished index (index.json is written last;
# every shard needs its manifest and global statistics). No shell: exec form.
RUN ["/fanout", "deploy", "check-index", "/index-src"]
USER 65532:65532
ENTRYPOINT ["/fanout"]
CMD ["deploy", "check-index", "/index-src"]
