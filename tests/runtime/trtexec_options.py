"""trtexec's command-line options per TensorRT release: every `"--name"` that samples/common/sampleOptions.cpp
parses on the release/8.5, release/8.6 and release/10.3 branches of NVIDIA/TensorRT (option names only; facts
for the strict trtexec stand-in in test_tensorrt_versions.py)."""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


TRTEXEC_OPTIONS: dict[str, frozenset[str]] = {
    "8.5": _names(
        "--allowGPUFallback --avgRuns --avgTiming --batch --best --buildOnly --calib --consistency --deploy "
        "--device --directIO --dumpLayerInfo --dumpOutput --dumpProfile --dumpRefit --duration --explicitBatch "
        "--explicitPrecision --exportLayerInfo --exportOutput --exportProfile --exportTimes --exposeDMA --fp16 "
        "--help --heuristic --idleTime --inputIOFormats --int8 --iterations --layerOutputTypes --layerPrecisions "
        "--loadEngine --loadInputs --maxBatch --maxShapes --maxShapesCalib --memPoolSize --minShapes "
        "--minShapesCalib --minTiming --model --noBuilderCache --noDataTransfers --noTF32 --nvtxMode --onnx "
        "--optShapes --optShapesCalib --output --outputIOFormats --percentile --persistentCacheRatio --plugins "
        "--precisionConstraints --preview --profilingVerbosity --refit --restricted --safe --saveEngine "
        "--separateProfileRun --serialized --shapes --sleepTime --sparsity --std --streams --tacticSources "
        "--threads --timeDeserialize --timeRefit --timingCacheFile --uff --uffInput --uffNHWC --useCudaGraph "
        "--useDLACore --useManagedMemory --useSpinWait --verbose --warmUp --workspace"
    ),
    "8.6": _names(
        "--allowGPUFallback --avgRuns --avgTiming --batch --best --buildDLAStandalone --buildOnly "
        "--builderOptimizationLevel --calib --consistency --deploy --device --directIO --dumpLayerInfo "
        "--dumpOutput --dumpProfile --dumpRawBindingsToFile --dumpRefit --duration --dynamicPlugins "
        "--excludeLeanRuntime --explicitBatch --explicitPrecision --exportLayerInfo --exportOutput "
        "--exportProfile --exportTimes --exposeDMA --fp16 --fp8 --hardwareCompatibilityLevel --help --heuristic "
        "--idleTime --ignoreParsedPluginLibs --infStreams --inputIOFormats --int8 --iterations --layerDeviceTypes "
        "--layerOutputTypes --layerPrecisions --leanDLLPath --loadEngine --loadInputs --maxAuxStreams --maxBatch "
        "--maxShapes --maxShapesCalib --memPoolSize --minShapes --minShapesCalib --minTiming --model "
        "--nativeInstanceNorm --ni --noBuilderCache --noDataTransfers --noTF32 --nvtxMode --onnx --optShapes "
        "--optShapesCalib --output --outputIOFormats --percentile --persistentCacheRatio --plugins "
        "--precisionConstraints --preview --profilingVerbosity --refit --restricted --safe --saveEngine "
        "--separateProfileRun --serialized --setPluginsToSerialize --shapes --skipInference --sleepTime "
        "--sparsity --staticPlugins --std --streams --tacticSources --tempdir --tempfileControls --threads "
        "--timeDeserialize --timeRefit --timingCacheFile --uff --uffInput --uffNHWC --useCudaGraph --useDLACore "
        "--useManagedMemory --useRuntime --useSpinWait --vc --verbose --versionCompatible --warmUp --workspace"
    ),
    "10.3": _names(
        "--allocationStrategy --allowGPUFallback --allowWeightStreaming --avgRuns --avgTiming --best --bf16 "
        "--buildDLAStandalone --builderOptimizationLevel --calib --calibProfile --consistency --device --directIO "
        "--dumpLayerInfo --dumpOptimizationProfile --dumpOutput --dumpProfile --dumpRawBindingsToFile --dumpRefit "
        "--duration --dynamicPlugins --errorOnTimingCacheMiss --excludeLeanRuntime --exportLayerInfo "
        "--exportOutput --exportProfile --exportTimes --exposeDMA --fp16 --fp8 --getPlanVersionOnly "
        "--hardwareCompatibilityLevel --help --idleTime --ignoreParsedPluginLibs --infStreams --inputIOFormats "
        "--int4 --int8 --iterations --layerDeviceTypes --layerOutputTypes --layerPrecisions --leanDLLPath "
        "--loadEngine --loadInputs --markDebug --maxAuxStreams --maxShapes --maxShapesCalib --memPoolSize "
        "--minShapes --minShapesCalib --noBuilderCache --noCompilationCache --noDataTransfers --noTF32 --onnx "
        "--optShapes --optShapesCalib --outputIOFormats --percentile --persistentCacheRatio --pi "
        "--pluginInstanceNorm --plugins --precisionConstraints --preview --profile --profilingVerbosity --refit "
        "--restricted --runtimePlatform --safe --saveDebugTensors --saveEngine --separateProfileRun --serialized "
        "--setPluginsToSerialize --shapes --skipInference --sleepTime --sparsity --staticPlugins --std --streams "
        "--stripAllWeights --stripWeights --stronglyTyped --tacticSources --tempdir --tempfileControls --threads "
        "--timeDeserialize --timeRefit --timingCacheFile --useCudaGraph --useDLACore --useManagedMemory "
        "--useProfile --useRuntime --useSpinWait --vc --verbose --versionCompatible --warmUp "
        "--weightStreamingBudget --weightless"
    ),
}
