# Spark master / worker: the platform image (same Python, torch and homefeed for pandas UDFs such
# as the pool-insertion job) plus hadoop-aws so jobs read and write s3a:// URIs.
ARG BASE=homefeed:latest
FROM ${BASE}

ARG HADOOP_VERSION=3.4.1
ARG AWS_SDK_VERSION=2.24.6
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/* \
    && JARS="$(python -c 'import pyspark, os; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')" \
    && curl -fsSL -o "$JARS/hadoop-aws-${HADOOP_VERSION}.jar" \
       "https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/${HADOOP_VERSION}/hadoop-aws-${HADOOP_VERSION}.jar" \
    && curl -fsSL -o "$JARS/bundle-${AWS_SDK_VERSION}.jar" \
       "https://repo1.maven.org/maven2/software/amazon/awssdk/bundle/${AWS_SDK_VERSION}/bundle-${AWS_SDK_VERSION}.jar"

ENV SPARK_NO_DAEMONIZE=true
ENTRYPOINT []
CMD ["spark-class", "org.apache.spark.deploy.master.Master"]
